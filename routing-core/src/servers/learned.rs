//! Statements the pool learned must run on the primary: reads a replica refused as writes
//! (SQLSTATE 25006). From then on, for the life of the pool, they go to the primary.

use std::any::TypeId;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A statement, as the pool recognises it again: by the query's static type, or by its SQL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum StatementKey {
    Static(TypeId),
    Sql(Arc<str>),
}

impl StatementKey {
    /// The key of a statement with static id `id` (if it has one) and SQL `sql`.
    pub(crate) fn of(id: Option<TypeId>, sql: &Arc<str>) -> Self {
        match id {
            Some(id) => StatementKey::Static(id),
            None => StatementKey::Sql(Arc::clone(sql)),
        }
    }
}

/// The statements a pool learned to send to the primary.
#[derive(Debug, Default)]
pub(crate) struct Learned {
    /// Whether anything was learned: the statements of a pool that learned nothing pay one
    /// load.
    any: AtomicBool,
    keys: Mutex<HashSet<StatementKey>>,
}

impl Learned {
    /// Whether the statement with static id `id`, or else SQL `sql`, was learned.
    pub(crate) fn contains(&self, id: Option<TypeId>, sql: Option<&str>) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match (id, sql) {
            (Some(id), _) => keys.contains(&StatementKey::Static(id)),
            (None, Some(sql)) => keys.contains(&StatementKey::Sql(sql.into())),
            (None, None) => false,
        }
    }

    /// Learns `key`; true the first time.
    pub(crate) fn learn(&self, key: StatementKey) -> bool {
        let new = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        self.any.store(true, Ordering::Release);
        new
    }

    /// How many statements were learned.
    pub(crate) fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_known_by_type_or_by_sql() {
        let learned = Learned::default();
        let sql = |text: &str| Arc::<str>::from(text);
        assert!(!learned.contains(Some(TypeId::of::<u8>()), Some("SELECT 1")));
        assert!(learned.learn(StatementKey::of(Some(TypeId::of::<u8>()), &sql("SELECT 1"))));
        assert!(!learned.learn(StatementKey::of(Some(TypeId::of::<u8>()), &sql("SELECT 2"))));
        assert!(learned.learn(StatementKey::of(None, &sql("SELECT f()"))));
        assert!(learned.contains(Some(TypeId::of::<u8>()), None));
        assert!(learned.contains(None, Some("SELECT f()")));
        assert!(!learned.contains(None, Some("SELECT g()")));
        assert!(!learned.contains(Some(TypeId::of::<u16>()), Some("SELECT f()")));
        assert_eq!(learned.len(), 2);
    }
}
