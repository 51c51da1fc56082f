//! Checks a manifest against a CRD's OpenAPI schema and CEL rules locally, so a
//! bad manifest is refused with the same field path the API server would name,
//! before it reaches a cluster (or in `mailfleet routes`, without one).

use kube::core::cel::Validator;
use serde_json::Value;

/// One thing wrong with a manifest, at a field path like `spec.ips[2].address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The `openAPIV3Schema` of the first version of a CRD, as JSON.
pub fn crd_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).expect("a CRD schema serialises")
}

/// Every violation of the schema (types, required fields, bounds, enums, unknown
/// fields) and of the CEL rules. Empty means the API server would accept it.
pub fn validate(schema: &Value, object: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    walk(schema, object, "", &mut out);
    // CEL rules assume a structurally valid object; on a broken one they only add noise.
    if out.is_empty() {
        if let Err(errors) = Validator::new().validate(schema, object, None) {
            for e in errors.into_vec() {
                let path = if e.field_path.is_empty() {
                    "(object)".to_string()
                } else {
                    e.field_path.clone()
                };
                out.push(Violation {
                    path,
                    message: e.message.clone(),
                });
            }
        }
    }
    out
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let here = || {
        if path.is_empty() {
            "(object)".to_string()
        } else {
            path.to_string()
        }
    };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(Violation {
                path: here(),
                message: "must not be null; remove the field or give it a value".into(),
            });
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            out.push(Violation {
                path: here(),
                message: format!("must be an integer or a string, not {}", type_name(value)),
            });
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            out.push(Violation {
                path: here(),
                message: format!("must be of type {expected}, not {actual}"),
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let words: Vec<String> = allowed
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect();
            out.push(Violation {
                path: here(),
                message: format!("{value} is not allowed; use one of: {}", words.join(", ")),
            });
        }
    }
    check_bounds(schema, value, &here(), out);
    match value {
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for key in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(key) {
                        out.push(Violation {
                            path: child(path, key),
                            message: "is required".into(),
                        });
                    }
                }
            }
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, v) in map {
                let sub = properties.and_then(|p| p.get(key));
                match (sub, additional) {
                    (Some(sub), _) => walk(sub, v, &child(path, key), out),
                    (None, Some(add)) if add.is_object() => walk(add, v, &child(path, key), out),
                    (None, _)
                        if preserve
                            || (path.is_empty() && (key == "apiVersion" || key == "kind")) => {}
                    (None, _) if path.is_empty() && key == "metadata" => {}
                    (None, _) => {
                        let known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        out.push(Violation {
                            path: child(path, key),
                            message: format!("unknown field (the API server would silently drop it); known fields here: {}", known.join(", ")),
                        });
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn check_bounds(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let mut push = |message: String| {
        out.push(Violation {
            path: path.to_string(),
            message,
        })
    };
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = num("minimum") {
                if x < min {
                    push(format!("must be at least {min}, not {n}"));
                }
            }
            if let Some(max) = num("maximum") {
                if x > max {
                    push(format!("must be at most {max}, not {n}"));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as f64;
            if let Some(min) = num("minLength") {
                if len < min {
                    push(format!("must have at least {min} characters"));
                }
            }
            if let Some(max) = num("maxLength") {
                if len > max {
                    push(format!("must have at most {max} characters, not {len}"));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if let Some(min) = num("minItems") {
                if len < min {
                    push(format!("must have at least {min} items"));
                }
            }
            if let Some(max) = num("maxItems") {
                if len > max {
                    push(format!("must have at most {max} items, not {len}"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["n"],
                    "properties": {
                        "n": {"type": "integer", "minimum": 0, "maximum": 100},
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    },
                    "x-kubernetes-validations": [{"rule": "self.n != 13", "message": "13 is unlucky"}]
                }
            }
        })
    }

    #[test]
    fn reports_each_violation_with_its_path() {
        let v = validate(
            &schema(),
            &json!({"spec": {"n": 101, "mode": "C", "tags": ["a", "b", "long"], "typo": 1}}),
        );
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"spec.n"), "{v:?}");
        assert!(paths.contains(&"spec.mode"), "{v:?}");
        assert!(paths.contains(&"spec.tags"), "{v:?}");
        assert!(paths.contains(&"spec.tags[2]"), "{v:?}");
        assert!(paths.contains(&"spec.typo"), "{v:?}");
    }

    #[test]
    fn required_and_type_errors() {
        let v = validate(&schema(), &json!({"spec": {"tags": "x"}}));
        assert!(
            v.iter()
                .any(|v| v.path == "spec.n" && v.message == "is required"),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|v| v.path == "spec.tags" && v.message.contains("type array")),
            "{v:?}"
        );
    }

    #[test]
    fn preserve_unknown_fields_accepts_anything_and_cel_runs_on_valid_objects() {
        assert!(validate(
            &schema(),
            &json!({"spec": {"n": 1, "free": {"x": {"y": 1}}}})
        )
        .is_empty());
        let v = validate(&schema(), &json!({"spec": {"n": 13}}));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].message.contains("unlucky"));
    }
}
