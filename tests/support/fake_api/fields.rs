//! Field ownership for server-side apply, simplified: a field is a path of
//! map keys down to a leaf; lists, scalars and empty maps are leaves, so a
//! list is owned and replaced as a whole (real SSA merges keyed lists such as
//! `containers` item by item). Each field manager owns a set of paths; an
//! apply that changes a path another manager owns is a conflict unless
//! forced, and paths a manager applied before but leaves out now are removed
//! when no other manager owns them. Updates (PUT, JSON/merge patch) take
//! ownership of what they change without conflicts, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no status subresource).
    Whole,
    /// Everything but `status` (main resource of a type with `/status`).
    AllButStatus,
    /// Only `status` (the `/status` subresource).
    StatusOnly,
}

impl Scope {
    pub fn contains(self, path: &[String]) -> bool {
        let in_status = path.first().is_some_and(|p| p == "status");
        match self {
            Scope::Whole => true,
            Scope::AllButStatus => !in_status,
            Scope::StatusOnly => in_status,
        }
    }
}

/// Paths the server sets itself; nobody owns them.
fn untracked(path: &[String]) -> bool {
    match path {
        [first] => first == "apiVersion" || first == "kind",
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The tracked leaf paths of `value` (null leaves are not fields).
pub fn leaves(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let mut path = Vec::new();
    collect_leaves(value, &mut path, &mut out);
    out
}

fn collect_leaves(value: &Value, path: &mut Vec<String>, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                if !untracked(path) {
                    collect_leaves(child, path, out);
                }
                path.pop();
            }
        }
        Value::Null => {}
        _ if path.is_empty() => {}
        _ => {
            out.insert(path.clone());
        }
    }
}

pub fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |at, key| at.as_object()?.get(key))
}

/// Removes the field at `path`, if present.
pub fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for key in parents {
        match at.as_object_mut().and_then(|m| m.get_mut(key)) {
            Some(child) => at = child,
            None => return,
        }
    }
    if let Some(map) = at.as_object_mut() {
        map.remove(last);
    }
}

/// Recursive merge of an applied configuration: maps merge key by key, a
/// `null` removes the key, anything else replaces.
pub fn merge_applied(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(target_map), Some(applied_map)) => {
            for (key, value) in applied_map {
                if value.is_null() {
                    target_map.remove(key);
                } else {
                    match target_map.get_mut(key) {
                        Some(existing) if existing.is_object() && value.is_object() => {
                            merge_applied(existing, value)
                        }
                        _ => {
                            target_map.insert(key.clone(), strip_nulls(value));
                        }
                    }
                }
            }
        }
        _ => *target = strip_nulls(applied),
    }
}

fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Who owns which fields of one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    pub managers: BTreeMap<String, FieldSet>,
}

/// An apply that would change fields other managers own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyConflicts(pub Vec<(String, FieldPath)>);

impl ApplyConflicts {
    /// Worded like the API server's message.
    pub fn message(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(manager, path)| format!("conflict with \"{manager}\": .{}", path.join(".")))
            .collect();
        format!(
            "Apply failed with {} conflict{}: {}",
            items.len(),
            if items.len() == 1 { "" } else { "s" },
            items.join("; ")
        )
    }
}

impl Ownership {
    /// Applies `applied` (already restricted to `scope`) by `manager` onto
    /// `object`. On success `object` holds the result and `self` the new
    /// ownership; on conflict neither changes.
    pub fn apply(
        &mut self,
        object: &mut Value,
        applied: &Value,
        manager: &str,
        scope: Scope,
        force: bool,
    ) -> Result<(), ApplyConflicts> {
        let applied_fields: FieldSet = leaves(applied)
            .into_iter()
            .filter(|p| scope.contains(p))
            .collect();
        let mut next = self.clone();
        let mut conflicts = Vec::new();
        for path in &applied_fields {
            if value_at(object, path) == value_at(applied, path) {
                continue;
            }
            for (other, owned) in next
                .managers
                .iter_mut()
                .filter(|(m, _)| m.as_str() != manager)
            {
                let clashing: Vec<FieldPath> = owned
                    .iter()
                    .filter(|o| overlaps(o, path))
                    .cloned()
                    .collect();
                if clashing.is_empty() {
                    continue;
                }
                if force {
                    for c in clashing {
                        owned.remove(&c);
                    }
                } else {
                    conflicts.push((other.clone(), path.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(ApplyConflicts(conflicts));
        }
        let previously: FieldSet = next.managers.get(manager).cloned().unwrap_or_default();
        let mut result = object.clone();
        for dropped in previously
            .iter()
            .filter(|p| scope.contains(p) && !applied_fields.contains(*p))
        {
            let owned_elsewhere = next
                .managers
                .iter()
                .any(|(m, owned)| m != manager && owned.iter().any(|o| overlaps(o, dropped)));
            if !owned_elsewhere {
                remove_at(&mut result, dropped);
            }
        }
        merge_applied(&mut result, applied);
        let mut mine: FieldSet = previously
            .into_iter()
            .filter(|p| !scope.contains(p))
            .collect();
        mine.extend(applied_fields);
        next.managers.insert(manager.to_string(), mine);
        next.managers.retain(|_, owned| !owned.is_empty());
        *self = next;
        *object = result;
        Ok(())
    }

    /// Records a non-apply write by `manager` that turned `before` into `after`.
    pub fn update(&mut self, before: &Value, after: &Value, manager: &str) {
        let before_fields = leaves(before);
        let after_fields = leaves(after);
        let changed: Vec<&FieldPath> = after_fields
            .iter()
            .filter(|p| value_at(before, p) != value_at(after, p))
            .collect();
        let removed: Vec<&FieldPath> = before_fields
            .iter()
            .filter(|p| !after_fields.contains(*p))
            .collect();
        for (other, owned) in self.managers.iter_mut() {
            owned.retain(|o| {
                let touched_by_other = other != manager && changed.iter().any(|c| overlaps(c, o));
                let gone = removed.iter().any(|r| overlaps(r, o)) && value_at(after, o).is_none();
                !(touched_by_other || gone)
            });
        }
        if !changed.is_empty() {
            self.managers
                .entry(manager.to_string())
                .or_default()
                .extend(changed.into_iter().cloned());
        }
        self.managers.retain(|_, owned| !owned.is_empty());
    }
}
