//! Raw capture (being built on its own branch).

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::{HitSink, Sensor, SensorControl};
use crate::config::Config;
use crate::event::Mode;

/// Raw sensor placeholder until the raw-capture branch lands.
pub struct RawSensor;

/// Failure to open raw capture.
#[derive(Debug, thiserror::Error)]
#[error("stealth and advanced modes (-stcp, -sudp, -atcp, -audp) are not yet supported")]
pub struct RawSensorError;

impl RawSensor {
    /// Not yet supported.
    pub fn open(_modes: &[Mode], _config: Arc<Config>) -> Result<RawSensor, RawSensorError> {
        Err(RawSensorError)
    }
}

impl Sensor for RawSensor {
    fn name(&self) -> String {
        "raw".into()
    }
    fn modes(&self) -> Vec<Mode> {
        Vec::new()
    }
    fn run(self: Box<Self>, _sink: HitSink, _control: Receiver<SensorControl>) {}
}
