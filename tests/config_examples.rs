//! Every example in `config/` must load: they are the documentation users copy from.

use std::path::Path;

use kvrouter::config::Config;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        ) {
            continue;
        }
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.pools.is_empty(), "{}", path.display());
        assert!(!config.listeners.is_empty(), "{}", path.display());
        println!("{}", config.summary());
        seen += 1;
    }
    assert!(seen >= 2, "expected example configs in {}", dir.display());
}
