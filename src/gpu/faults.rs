//! GPU faults: wgpu reports validation errors and device loss through callbacks; they wait
//! here until the next call that checks returns them as `Error`s.

use std::sync::Mutex;

use super::{GpuBackend, lock};
use crate::{Error, Result};

/// Errors reported by wgpu callbacks, waiting to be returned by the next call that checks.
#[derive(Default)]
pub(super) struct Faults {
    error: Option<String>,
    lost: Option<String>,
}

/// A fault for tests: no GPU can be unplugged in CI, so `WGNORM_FAULT_LOSE_DEVICE_AT_SUBMIT=N`
/// destroys the device right after wgnorm's Nth submission, losing it mid-run. Only devices
/// wgnorm opens itself read it.
pub(super) struct DeviceLossFault {
    at_submit: u64,
}

impl DeviceLossFault {
    pub(super) fn from_env() -> Option<Self> {
        let at_submit = std::env::var("WGNORM_FAULT_LOSE_DEVICE_AT_SUBMIT")
            .ok()?
            .parse()
            .ok()?;
        Some(Self { at_submit })
    }

    /// Whether the device is to be lost after wgnorm's `submissions`th submission.
    pub(super) fn strikes(&self, submissions: u64) -> bool {
        submissions == self.at_submit
    }
}

impl GpuBackend {
    /// Routes the device's uncaptured errors and its loss into `faults`, for a device wgnorm
    /// owns (a host keeps its own handlers).
    pub(super) fn catch_faults(&self) {
        let on_error = std::sync::Arc::clone(&self.shared.faults);
        self.shared
            .device
            .on_uncaptured_error(std::sync::Arc::new(move |error: wgpu::Error| {
                lock(&on_error)
                    .error
                    .get_or_insert_with(|| error.to_string());
            }));
        let on_lost = std::sync::Arc::clone(&self.shared.faults);
        self.shared
            .device
            .set_device_lost_callback(move |reason, message| {
                lock(&on_lost)
                    .lost
                    .get_or_insert_with(|| match message.as_str() {
                        "" => format!("{reason:?}"),
                        message => format!("{reason:?}: {message}"),
                    });
            });
    }

    /// Returns the first error wgpu reported since the last check, if any.
    pub(super) fn check(&self) -> Result<()> {
        let mut faults = lock(&self.shared.faults);
        if let Some(lost) = &faults.lost {
            return Err(Error::DeviceLost(lost.clone()));
        }
        match faults.error.take() {
            Some(error) => Err(Error::Gpu(error)),
            None => Ok(()),
        }
    }
}

/// The faults of one device, shared with its callbacks.
pub(super) type SharedFaults = std::sync::Arc<Mutex<Faults>>;
