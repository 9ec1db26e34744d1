//! Running blocking device calls from actor handlers with a deadline.
//!
//! Drivers are blocking (std sockets with their own timeouts). An actor never awaits
//! hardware without a deadline: the call runs on tokio's blocking pool and the handler
//! waits at most `deadline`; a driver that overruns is reported as a timeout naming the
//! device (its own deadline then ends the stray call).

use std::sync::{Arc, Mutex};
use std::time::Duration;
use stemflow_core::devices::DeviceError;

/// A device shared between an actor and the blocking threads that run its calls.
pub type Shared<D> = Arc<Mutex<D>>;

/// Runs `f` on the device on a blocking thread, waiting at most `deadline`.
///
/// # Errors
/// `f`'s own [`DeviceError`]; [`DeviceError::Timeout`] naming `device` and `what` when the
/// deadline passes; [`DeviceError::State`] when a previous call panicked while holding the
/// device (the actor is then restarted by its supervisor).
pub async fn call_device<D, T, F>(
    dev: &Shared<D>,
    device: &str,
    what: &str,
    deadline: Duration,
    f: F,
) -> Result<T, DeviceError>
where
    D: ?Sized + Send + 'static,
    T: Send + 'static,
    F: FnOnce(&mut D) -> Result<T, DeviceError> + Send + 'static,
{
    let dev = Arc::clone(dev);
    let name = device.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let mut guard = dev.lock().map_err(|_| DeviceError::State {
            device: name.clone(),
            action: "use the device".into(),
            state: "poisoned by an earlier panic".into(),
        })?;
        f(&mut guard)
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(DeviceError::State {
            device: device.to_string(),
            action: what.to_string(),
            state: format!("its call panicked: {join}"),
        }),
        Err(_) => Err(DeviceError::Timeout {
            device: device.to_string(),
            what: what.to_string(),
            waited_s: deadline.as_secs_f64(),
        }),
    }
}
