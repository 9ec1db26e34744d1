//! Bounded pools of preallocated buffers.
//!
//! Touching fresh memory is slow on our machines (~0.5 GB/s) while reusing it is fast
//! (~10 GB/s), so the data path allocates its frame buffers once, up front, and recycles
//! them. The pool is also the backpressure: when processing falls behind, every buffer is in
//! flight, [`Pool::take`] blocks, the receiver stops reading, and the transport pushes back
//! on the sender (TCP window).

use crossbeam_channel::{Receiver, Sender, bounded};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// Errors taking a buffer from a [`Pool`].
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PoolError {
    /// No buffer came back within the deadline: the consumer is stalled.
    #[error(
        "pool `{pool}`: no free buffer of {capacity} within {waited_s:.3} s (consumer stalled?)"
    )]
    Exhausted {
        /// The pool's name.
        pool: String,
        /// Buffers in the pool.
        capacity: usize,
        /// How long we waited, in seconds.
        waited_s: f64,
    },
}

/// A fixed set of preallocated buffers of type `T` handed out as [`Pooled`] and returned
/// automatically on drop. Cloning the pool shares it.
#[derive(Clone, Debug)]
pub struct Pool<T: Send> {
    name: String,
    capacity: usize,
    give: Sender<T>,
    take: Receiver<T>,
}

impl<T: Send> Pool<T> {
    /// A pool named `name` holding `capacity` buffers made by `make` (called `capacity`
    /// times, now; allocate and touch the memory there so the data path never does).
    pub fn new(name: &str, capacity: usize, mut make: impl FnMut() -> T) -> Self {
        let (give, take) = bounded(capacity);
        for _ in 0..capacity {
            give.send(make())
                .expect("pool channel has room for every buffer");
        }
        Self {
            name: name.to_string(),
            capacity,
            give,
            take,
        }
    }
    /// Number of buffers in the pool (free and in flight).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Number of free buffers now.
    pub fn free(&self) -> usize {
        self.take.len()
    }
    /// Takes a free buffer, waiting at most `deadline`.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`] when no buffer was returned in time.
    pub fn take(&self, deadline: Duration) -> Result<Pooled<T>, PoolError> {
        match self.take.recv_timeout(deadline) {
            Ok(item) => Ok(Pooled {
                item: Some(item),
                home: self.give.clone(),
            }),
            Err(_) => Err(PoolError::Exhausted {
                pool: self.name.clone(),
                capacity: self.capacity,
                waited_s: deadline.as_secs_f64(),
            }),
        }
    }
    /// Takes a free buffer if one is free now.
    pub fn try_take(&self) -> Option<Pooled<T>> {
        self.take.try_recv().ok().map(|item| Pooled {
            item: Some(item),
            home: self.give.clone(),
        })
    }
}

/// A buffer on loan from a [`Pool`]; goes back to the pool when dropped.
#[derive(Debug)]
pub struct Pooled<T: Send> {
    item: Option<T>,
    home: Sender<T>,
}

impl<T: Send> Pooled<T> {
    /// Wraps a buffer that belongs to no pool (e.g. offline reading); dropping it frees it.
    pub fn unpooled(item: T) -> Self {
        let (home, _) = bounded(1);
        Self {
            item: Some(item),
            home,
        }
    }
}

impl<T: Send> Deref for Pooled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("pooled item present until drop")
    }
}

impl<T: Send> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("pooled item present until drop")
    }
}

impl<T: Send> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            // The pool may be gone (acquisition over); then the buffer is simply freed.
            let _ = self.home.try_send(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_on_drop_and_exhaustion_times_out() {
        let pool = Pool::new("test", 2, || vec![0u8; 16]);
        let a = pool.take(Duration::from_millis(10)).unwrap();
        let mut b = pool.take(Duration::from_millis(10)).unwrap();
        b[0] = 7;
        assert_eq!(pool.free(), 0);
        let err = pool.take(Duration::from_millis(5)).unwrap_err();
        assert!(err.to_string().contains("no free buffer of 2"));
        drop(b);
        assert_eq!(pool.free(), 1);
        let c = pool.take(Duration::from_millis(10)).unwrap();
        assert_eq!(c[0], 7, "the same allocation comes back");
        drop((a, c));
        assert_eq!(pool.free(), 2);
    }
}
