//! The metrics registry behind `GET /metrics`: the proxy registers its families into it at
//! start; this module adds the process collector (CPU, memory, file descriptors on Linux) and
//! renders the Prometheus text format.

use prometheus::{Encoder, Registry, TextEncoder};

/// A registry with the process collector in it.
pub fn registry() -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("process collector registered once");
    r
}

/// The registry in Prometheus' text exposition format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_process_metrics() {
        let text = render(&registry());
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
