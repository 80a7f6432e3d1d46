//! A collective that counts the time spent in it: what exchanging with the other ranks (and
//! waiting for the slowest of them) costs a rank.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use super::Collective;
use crate::Result;

/// `inner`, timing every call.
pub struct Timed {
    inner: Rc<dyn Collective>,
    seconds: Cell<f64>,
}

impl Timed {
    /// `inner`, with nothing counted yet.
    pub fn new(inner: Rc<dyn Collective>) -> Self {
        Self {
            inner,
            seconds: Cell::new(0.0),
        }
    }

    /// Seconds spent in collectives since the last call.
    pub fn take_seconds(&self) -> f64 {
        self.seconds.replace(0.0)
    }

    fn time<T>(&self, call: impl FnOnce(&dyn Collective) -> T) -> T {
        let started = Instant::now();
        let result = call(&*self.inner);
        (self.seconds).set(self.seconds.get() + started.elapsed().as_secs_f64());
        result
    }
}

impl Collective for Timed {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world(&self) -> usize {
        self.inner.world()
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
        self.time(|group| group.all_reduce_sum(values))
    }

    fn all_reduce_sum_u64(&self, values: &mut [u64]) -> Result<()> {
        self.time(|group| group.all_reduce_sum_u64(values))
    }

    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>> {
        self.time(|group| group.all_gather(values))
    }

    fn all_gather_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        self.time(|group| group.all_gather_u64(values))
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<()> {
        self.time(|group| group.broadcast(values, root))
    }

    fn broadcast_u64(&self, values: &mut [u64], root: usize) -> Result<()> {
        self.time(|group| group.broadcast_u64(values, root))
    }

    fn barrier(&self) -> Result<()> {
        self.time(|group| group.barrier())
    }

    fn abort(&self, why: &str) {
        self.inner.abort(why)
    }
}
