//! `Model::load` reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE. A test binary of its own:
//! it changes the process environment, which no other test may share.

mod common;

use common::*;
use llm_attr::model::load::HubOptions;
use llm_attr::model::LoadOptions;
use llm_attr::model::Model;

#[test]
fn environment_settings_are_honoured() {
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HF_TOKEN");
    let hub = start_hub();
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_ENDPOINT", format!("{}/", hub.url));
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let opts = HubOptions::from_env();
    assert_eq!(opts.endpoint, hub.url);
    assert_eq!(opts.cache_dir, home.path().join("hub"));
    assert!(opts.offline);
    assert!(Model::load("hf:tiny/gpt2", &LoadOptions::default()).is_err());

    std::env::set_var("HF_HUB_OFFLINE", "0");
    let m = Model::load("hf:tiny/gpt2", &LoadOptions::default()).unwrap();
    assert_eq!(reference_scores(&m), local_scores());
    assert!(home.path().join("hub/models--tiny--gpt2/refs/main").is_file());
}
