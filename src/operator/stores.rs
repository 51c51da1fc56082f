//! Reflector stores over one or several watched namespaces, read as one.

use std::sync::Arc;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

/// The stores of one kind, one per watched scope (a namespace, or all).
pub struct Stores<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Store<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Stores<K> {
    fn clone(&self) -> Self {
        Stores {
            stores: self.stores.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    pub fn new(stores: Vec<Store<K>>) -> Self {
        Stores { stores }
    }

    /// Every object of this kind in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores.iter().find_map(|s| s.get(&key))
    }

    /// Waits until every store has seen its first complete list.
    pub async fn wait_until_ready(&self) -> bool {
        for store in &self.stores {
            if store.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}
