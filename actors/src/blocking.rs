//! Running blocking device calls from actor handlers with a deadline.
//!
//! Drivers are blocking (std sockets with their own timeouts). An actor never awaits
//! hardware without a deadline: the call runs on tokio's blocking pool and the handler
//! waits at most `deadline`; a driver that overruns is reported as a timeout naming the
//! device (its own deadline then ends the stray call).

use ractor::ActorProcessingErr;
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

/// A device actor's state: the driver (shared with the blocking threads that run its calls)
/// and its name for errors. The detector, scan engine and microscope actors all hold one.
pub struct DeviceHandle<D> {
    name: String,
    dev: Shared<D>,
}

impl<D: Send + 'static> DeviceHandle<D> {
    /// Builds the driver with `factory` on a blocking thread (connecting may block) and
    /// names it with `name`.
    ///
    /// # Errors
    /// The factory's [`DeviceError`], or a failed blocking task.
    pub async fn open(
        factory: impl FnOnce() -> Result<D, DeviceError> + Send + 'static,
        name: fn(&D) -> &str,
    ) -> Result<Self, ActorProcessingErr> {
        let dev = tokio::task::spawn_blocking(factory).await??;
        Ok(Self {
            name: name(&dev).to_string(),
            dev: Arc::new(Mutex::new(dev)),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`call_device`] on this device.
    ///
    /// # Errors
    /// As [`call_device`].
    pub async fn call<T, F>(&self, what: &str, deadline: Duration, f: F) -> Result<T, DeviceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut D) -> Result<T, DeviceError> + Send + 'static,
    {
        call_device(&self.dev, &self.name, what, deadline, f).await
    }
}
