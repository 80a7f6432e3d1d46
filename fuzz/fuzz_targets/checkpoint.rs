//! The checkpoint loader: any bytes give a model (and training state) consistent with the
//! architecture they claim, or an error.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgnorm::checkpoint;
use wgnorm::optim::OptimizerConfig;

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let adam = OptimizerConfig::adam(1e-3);
    if let Ok(saved) = checkpoint::parse_model(path, bytes) {
        saved
            .model
            .check(&saved.spec)
            .expect("a loaded model fits its spec");
    }
    let spec = wgnorm_fuzz::tiny_spec(true);
    if let Ok(state) = checkpoint::parse_state(path, bytes, &spec, adam.state_names()) {
        for (param, per_param) in spec.params().iter().zip(&state.optimizer) {
            let elements: usize = param.shape.iter().product();
            assert!(per_param.iter().all(|values| values.len() == elements));
        }
    }
});
