//! One Prometheus registry per process (prometheus-client), and what every
//! process exports in it: `mailfleet_build_info` and the `process_*` series.
//!
//! Each part of a process that counts something is a [`Families`] source: it
//! keeps its own counts (sorted maps, so two scrapes of an idle process are
//! equal) and writes them through prometheus-client's encoder at scrape time.
//! The process registers its sources once ([`ProcessRegistry::register`]);
//! `/metrics` encodes the registry in the Prometheus text format 0.0.4, the
//! format every scraper of the project's ports already reads.
//!
//! The names, types and labels of the families the operator and standalone
//! mode share are declared once, in [`catalogue`], and checked against the
//! table in docs/OPERATING.md by `tests/docs_metrics.rs`.

pub mod catalogue;
pub mod process;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Something that writes metric families at scrape time.
pub trait Families: Send + Sync + 'static {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

impl<T: Families> Families for Arc<T> {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.as_ref().encode(out)
    }
}

/// Adapts a [`Families`] source to prometheus-client's [`Collector`].
struct Source<T>(T);

impl<T> fmt::Debug for Source<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mailfleet metrics source")
    }
}

impl<T: Families> Collector for Source<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut encoder)
    }
}

/// The registry of one process. Parts register as they start (the HTTP port
/// after the controllers), so registration goes through a shared handle.
#[derive(Clone)]
pub struct ProcessRegistry {
    registry: Arc<Mutex<Registry>>,
}

impl Default for ProcessRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRegistry {
    /// A registry holding `mailfleet_build_info` and the process metrics.
    pub fn new() -> Self {
        let registry = ProcessRegistry {
            registry: Arc::new(Mutex::new(Registry::default())),
        };
        registry.register(process::BuildInfo);
        registry.register(process::ProcessStats);
        registry
    }

    pub fn register<T: Families>(&self, source: T) {
        self.lock().register_collector(Box::new(Source(source)));
    }

    /// The Prometheus text exposition (format 0.0.4) of every source.
    pub fn encode(&self) -> String {
        encode_registry(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic elsewhere must not take the metrics down with it.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One source alone, as text (for tests and the command line's one-shot views).
pub fn render<T: Families + Clone>(source: &T) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Source(source.clone())));
    encode_registry(&registry)
}

fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a source's error leaves what it wrote.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// The latest copy of counts owned by a task (the probes' loop): the task
/// [`publish`](Published::publish)es after each round, a scrape encodes the copy.
pub struct Published<T> {
    latest: Arc<Mutex<T>>,
}

impl<T> Clone for Published<T> {
    fn clone(&self) -> Self {
        Published {
            latest: Arc::clone(&self.latest),
        }
    }
}

impl<T: Default> Default for Published<T> {
    fn default() -> Self {
        Published {
            latest: Arc::new(Mutex::new(T::default())),
        }
    }
}

impl<T> Published<T> {
    pub fn publish(&self, value: T) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl<T: Families> Families for Published<T> {
    fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .encode(out)
    }
}

/// Writes one family: its `# HELP` and `# TYPE` lines, then a sample per row.
/// `name` is the exported name; a counter's is written with its `_total`
/// (prometheus-client adds the suffix itself, so it is taken off here).
pub fn family<L, V>(
    out: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: Into<Value>,
{
    let base = match kind {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let mut metric = out.encode_descriptor(base, help, None, kind)?;
    for (labels, value) in rows {
        let sample = metric.encode_family(&labels)?;
        match (kind, value.into()) {
            (MetricType::Counter, Value::Int(n)) => {
                ConstCounter::new(n.max(0) as u64).encode(sample)?
            }
            (MetricType::Counter, Value::Float(x)) => ConstCounter::new(x).encode(sample)?,
            (_, Value::Int(n)) => ConstGauge::new(n).encode(sample)?,
            (_, Value::Float(x)) => ConstGauge::new(x).encode(sample)?,
        }
    }
    Ok(())
}

/// A family without labels and with one sample.
pub fn single(
    out: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Into<Value>,
) -> fmt::Result {
    family(out, name, help, kind, [(NO_LABELS, value)])
}

/// The label set of a sample without labels.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// A sample's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value::from(n as u64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Int(i64::from(b))
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

pub use prometheus_client::metrics::MetricType as Kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Two;

    impl Families for Two {
        fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
            family(
                out,
                "t_requests_total",
                "Requests.",
                Kind::Counter,
                [([("code", "200")], 3u64), ([("code", "a\"b\n")], 1u64)],
            )?;
            single(out, "t_up", "Up.", Kind::Gauge, true)
        }
    }

    #[test]
    fn counters_keep_their_exported_name_and_labels_are_escaped() {
        let text = render(&Two);
        assert_eq!(
            text,
            "# HELP t_requests_total Requests.\n\
             # TYPE t_requests_total counter\n\
             t_requests_total{code=\"200\"} 3\n\
             t_requests_total{code=\"a\\\"b\\n\"} 1\n\
             # HELP t_up Up.\n\
             # TYPE t_up gauge\n\
             t_up 1\n"
        );
    }

    #[test]
    fn a_process_registry_carries_build_info_and_process_series() {
        let registry = ProcessRegistry::new();
        registry.register(Two);
        let text = registry.encode();
        assert!(
            text.contains(&format!(
                "mailfleet_build_info{{version=\"{}\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("t_up 1\n"), "{text}");
        if cfg!(target_os = "linux") {
            for family in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(family), "{family} missing in {text}");
            }
        }
    }
}
