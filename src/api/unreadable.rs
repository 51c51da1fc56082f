//! Reading a status that another operator version (or a person) wrote in a
//! shape this one cannot read.
//!
//! A watch lists every object of a kind in one answer: one status that does
//! not deserialise would fail the whole list, and the operator would stop
//! reconciling every pool, not only the bad one. So a status is read
//! leniently: what does not parse is cut out piece by piece (the field, else
//! the list entry holding it), each cut is recorded with its path, and the
//! object is kept with the rest. The controller reports the cuts on that
//! object (event, condition-free log line, metric) and writes a status that
//! replaces what was stored, which repairs it.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;

/// Cuts made before giving up and reading the status as empty.
const MAX_CUTS: usize = 64;

/// What could not be read from a stored status, kept with the status read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnreadableStatus {
    /// One line per part cut out: `status.<path>: <why>`.
    pub problems: Vec<String>,
    /// The status as stored, so the repair can remove exactly what was cut.
    pub raw: Value,
}

impl UnreadableStatus {
    /// The problems in one sentence for an event or a log line.
    pub fn summary(&self) -> String {
        format!(
            "the stored status could not be read and was repaired ({} part(s) dropped): {}",
            self.problems.len(),
            self.problems.join("; ")
        )
    }
}

/// Reads `value` with `strict`; on failure cuts out what does not parse and
/// tries again. Returns what was read and, if anything was cut, the record.
pub fn read_leniently<T, F>(value: Value, strict: F) -> (T, Option<UnreadableStatus>)
where
    T: Default,
    F: Fn(serde_path_to_error::Deserializer<'_, '_, Value>) -> Result<T, serde_json::Error>,
{
    let raw = value.clone();
    let mut value = value;
    let mut problems = Vec::new();
    for _ in 0..MAX_CUTS {
        let mut track = serde_path_to_error::Track::new();
        let attempt = strict(serde_path_to_error::Deserializer::new(
            value.clone(),
            &mut track,
        ));
        match attempt {
            Ok(read) => {
                let unreadable =
                    (!problems.is_empty()).then_some(UnreadableStatus { problems, raw });
                return (read, unreadable);
            }
            Err(error) => {
                let path: Vec<Segment> = track.path().iter().cloned().collect();
                problems.push(format!("status{}: {error}", dotted(&path)));
                if !cut(&mut value, &path) {
                    break;
                }
            }
        }
    }
    problems.push("status: too much could not be read; read as empty".to_string());
    (T::default(), Some(UnreadableStatus { problems, raw }))
}

/// `.ips[3].reputation[0].state`
fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Removes the value at `path` (its key, or its list entry). An empty path
/// (the status itself is not an object) leaves an empty object. Returns
/// whether anything changed.
fn cut(value: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        if value == &Value::Object(Default::default()) {
            return false;
        }
        *value = Value::Object(Default::default());
        return true;
    };
    let mut parent = &mut *value;
    for segment in parents {
        let next = match (segment, parent) {
            (Segment::Seq { index }, Value::Array(items)) => items.get_mut(*index),
            (Segment::Map { key }, Value::Object(map)) => map.get_mut(key),
            _ => None,
        };
        match next {
            Some(next) => parent = next,
            // The path leads nowhere we can cut: drop the top-level field.
            None => return cut_top(value, path),
        }
    }
    match (last, parent) {
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        (Segment::Map { key }, Value::Object(map)) => map.remove(key).is_some(),
        _ => cut_top(value, path),
    }
}

fn cut_top(value: &mut Value, path: &[Segment]) -> bool {
    match (path.first(), value) {
        (Some(Segment::Map { key }), Value::Object(map)) => map.remove(key).is_some(),
        _ => false,
    }
}

/// Reads `value` as `T` with `T`'s own `Deserialize`, leniently.
pub fn read_value_leniently<T: DeserializeOwned + Default>(
    value: Value,
) -> (T, Option<UnreadableStatus>) {
    read_leniently(value, |de| T::deserialize(de))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Status {
        #[serde(default)]
        count: i32,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        name: String,
        #[serde(default)]
        state: Option<State>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum State {
        Healthy,
        Blocked,
    }

    #[test]
    fn a_readable_status_is_read_as_it_is() {
        let (status, unreadable): (Status, _) =
            read_value_leniently(json!({"count": 2, "items": [{"name": "a"}]}));
        assert_eq!(status.count, 2);
        assert_eq!(unreadable, None);
    }

    #[test]
    fn a_bad_field_is_cut_and_its_path_named_and_the_rest_kept() {
        let stored = json!({
            "count": 2,
            "items": [
                {"name": "a", "state": "Blocked"},
                {"name": "b", "state": "Quarantined"},
                {"state": "Healthy"}
            ]
        });
        let (status, unreadable): (Status, _) = read_value_leniently(stored.clone());
        assert_eq!(status.count, 2);
        assert_eq!(
            status.items,
            vec![
                Item {
                    name: "a".into(),
                    state: Some(State::Blocked)
                },
                Item {
                    name: "b".into(),
                    state: None
                }
            ]
        );
        let unreadable = unreadable.unwrap();
        assert_eq!(unreadable.raw, stored);
        assert!(
            unreadable.problems[0]
                .starts_with("status.items[1].state: unknown variant `Quarantined`"),
            "{:?}",
            unreadable.problems
        );
        assert!(
            unreadable.problems[1].starts_with("status.items[2]: missing field `name`"),
            "{:?}",
            unreadable.problems
        );
    }

    #[test]
    fn a_status_that_is_not_an_object_reads_as_empty() {
        let (status, unreadable): (Status, _) = read_value_leniently(json!("garbage"));
        assert_eq!(status, Status::default());
        assert!(unreadable.unwrap().problems[0].starts_with("status: "));
    }
}
