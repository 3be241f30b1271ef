//! Statements before they run, for both connections (async and sync): classified (cached for
//! queries whose SQL never changes), checked against what the pool learned, and routed where the
//! routing context does not matter ([`prepare`]).

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::QueryFragment;

use crate::classify::{Classification, SessionEffects, operation_name};
use crate::owned::Rendered;
use crate::route::{self, Route, State, Statement};
use crate::servers::Shared;

/// What the router makes of a statement's text.
#[derive(Clone, Debug, Default)]
pub(crate) struct Class {
    /// `None` for a read, the classification of a write.
    pub(crate) write: Option<Arc<Classification>>,
    /// What the statement may leave in its session (only writes can): state, or an open
    /// transaction block (see [`crate::Classifier::changes_session`]).
    pub(crate) session: SessionEffects,
    /// Its leading statement keyword (`db.operation.name`).
    pub(crate) operation: Option<&'static str>,
}

impl Class {
    /// The class of `sql`.
    fn of(shared: &Shared, sql: &str) -> Self {
        let classifier = shared.config().classifier();
        let class = classifier.classify(sql);
        let operation = operation_name(sql);
        if class.is_read() {
            return Class {
                operation,
                ..Class::default()
            };
        }
        Class {
            write: Some(Arc::new(class)),
            session: classifier.session_effects(sql),
            operation,
        }
    }
}

/// What the cache keeps of a static query.
#[derive(Clone)]
struct Classified {
    class: Class,
    rendered: Rendered,
}

/// Builds a hash from a `TypeId`'s own bits: `TypeId`s are already well-distributed hashes.
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_ne_bytes(word);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(5) ^ n;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type ClassCache = HashMap<(usize, TypeId), Classified, BuildHasherDefault<TypeIdHasher>>;

thread_local! {
    /// Classifications of statically known queries, by pool and query type.
    static CLASSIFIED: RefCell<ClassCache> = RefCell::new(ClassCache::default());
}

/// How many SQL texts of one pool [`class_of_text`] keeps per thread before it starts over.
const TEXTS_KEPT: usize = 256;

/// How many pools' texts [`class_of_text`] keeps per thread before it starts over.
const POOLS_KEPT: usize = 4;

/// The longest text [`class_of_text`] keeps, in bytes: a longer one (a multi-row `INSERT`'s)
/// costs more to render than to classify. With the two bounds above, a thread keeps at most
/// 1 MiB of texts, however many threads run statements (a blocking pool's can be hundreds).
const LONGEST_KEPT: usize = 1024;

type TextCache = HashMap<usize, HashMap<Arc<str>, Class, foldhash::fast::RandomState>>;

thread_local! {
    /// Classes of statements without a static id, by pool and SQL text: diesel's `UPDATE`s,
    /// `INSERT`s, `DELETE`s and boxed queries have none, but an application sends a bounded set
    /// of texts, and classifying one takes a few passes of the lexer.
    static BY_TEXT: RefCell<TextCache> = RefCell::new(TextCache::default());
}

/// The class of `sql`, classified once per pool and thread while the cache keeps it (and
/// classified every time on a thread whose cache is gone, as it exits).
fn class_of_text(shared: &Shared, sql: &Arc<str>) -> Class {
    let pool = shared.id();
    let cached = BY_TEXT.try_with(|cache| {
        let cache = cache.borrow();
        cache
            .get(&pool)
            .and_then(|texts| texts.get(&**sql))
            .cloned()
    });
    if let Ok(Some(class)) = cached {
        return class;
    }
    let class = Class::of(shared, sql);
    #[cfg(test)]
    tests::TEXTS_CLASSIFIED.with(|n| n.set(n.get() + 1));
    if sql.len() > LONGEST_KEPT {
        return class;
    }
    let _ = BY_TEXT.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(&pool) && cache.len() >= POOLS_KEPT {
            cache.clear();
        }
        let texts = cache.entry(pool).or_default();
        if texts.len() >= TEXTS_KEPT {
            texts.clear();
        }
        texts.insert(Arc::clone(sql), class.clone());
    });
    class
}

/// Classifies `query` with `shared`'s classifier, and returns its SQL when it had to be
/// rendered. Queries with a static id (whose SQL never changes) are rendered and classified once
/// per pool and thread: a cached read costs one lookup, and its SQL is fetched by [`rendered`]
/// only when needed.
pub(crate) fn classify(
    shared: &Shared,
    query: &dyn QueryFragment<Pg>,
    query_id: Option<TypeId>,
) -> QueryResult<(Class, Option<Rendered>)> {
    let key = query_id.map(|id| (shared.id(), id));
    if let Some(key) = key {
        let cached = CLASSIFIED
            .try_with(|cache| cache.borrow().get(&key).map(|cached| cached.class.clone()));
        if let Ok(Some(class)) = cached {
            return Ok((class, None));
        }
    }
    let rendered = Rendered::of(query)?;
    // Diesel's own statement cache trusts a static id only for SQL that is safe to cache. Such a
    // query is kept by its type from now on; any other, by its text.
    let by_type = key.filter(|_| rendered.safe_to_cache);
    let class = match by_type {
        Some(_) => Class::of(shared, &rendered.sql),
        None => class_of_text(shared, &rendered.sql),
    };
    if let Some(key) = by_type {
        let cached = Classified {
            class: class.clone(),
            rendered: rendered.clone(),
        };
        let _ = CLASSIFIED.try_with(|cache| cache.borrow_mut().insert(key, cached));
    }
    Ok((class, Some(rendered)))
}

/// The SQL of `query`: from the cache of static queries, or rendered now.
pub(crate) fn rendered(
    shared: &Shared,
    query: &dyn QueryFragment<Pg>,
    query_id: Option<TypeId>,
) -> QueryResult<Rendered> {
    let key = query_id.map(|id| (shared.id(), id));
    let cached = key.and_then(|key| {
        CLASSIFIED
            .try_with(|cache| cache.borrow().get(&key).map(|c| c.rendered.clone()))
            .ok()
            .flatten()
    });
    match cached {
        Some(rendered) => Ok(rendered),
        None => Rendered::of(query),
    }
}

/// A statement, classified, and its route when the routing context does not matter.
pub(crate) struct Prepared {
    /// The route, when the connection's state or the statement fix it (see [`route::fixed`]).
    pub(crate) fixed: Option<Route>,
    /// The SQL, when classifying rendered it.
    pub(crate) rendered: Option<Rendered>,
    /// What the statement may leave in its session: state or an open transaction block.
    pub(crate) session: SessionEffects,
    /// Its leading statement keyword (`db.operation.name`).
    pub(crate) operation: Option<&'static str>,
    /// Whether the statement writes (or must run on the primary as if it did): the connection
    /// notes a write.
    pub(crate) writes: bool,
    /// Whether the statement may write outside a transaction: it commits as it ends, and the
    /// server tells how the commit went after the statement's rows.
    pub(crate) commits: bool,
}

/// Classifies `query` for a connection in `state`, and fixes its route where the routing
/// context does not matter: an open transaction, a test transaction, an earlier write, a write,
/// a statement the pool learned must run on the primary. The route is logged when fixed.
pub(crate) fn prepare(
    shared: &Shared,
    state: &State,
    query: &dyn QueryFragment<Pg>,
    query_id: Option<TypeId>,
) -> QueryResult<Prepared> {
    let (class, rendered) = classify(shared, query, query_id)?;
    let statement = match &class.write {
        Some(_) => Statement::Write,
        None if shared
            .learned()
            .contains(query_id, rendered.as_ref().map(|rendered| &*rendered.sql)) =>
        {
            Statement::Learned
        }
        None => Statement::Read,
    };
    let fixed = route::fixed(state, statement);
    let commits = matches!(statement, Statement::Write | Statement::Learned)
        && state.pinned.is_none()
        && !state.test_transaction;
    if let Some(route) = fixed {
        let detail: Option<&dyn std::fmt::Display> = match class.write.as_deref() {
            Some(Classification::Write(why)) => Some(why),
            _ => None,
        };
        route::log(route, detail);
    }
    Ok(Prepared {
        fixed,
        rendered,
        session: class.session,
        operation: class.operation,
        writes: fixed.is_some_and(|route| {
            matches!(
                route.reason,
                crate::reason::Reason::Write | crate::reason::Reason::RefusedAsWrite
            )
        }),
        commits,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::RoutedPool;

    thread_local! {
        /// Texts this thread classified with the lexer: misses of the cache.
        pub(super) static TEXTS_CLASSIFIED: Cell<usize> = const { Cell::new(0) };
    }

    fn classified() -> usize {
        TEXTS_CLASSIFIED.with(Cell::get)
    }

    fn pool() -> RoutedPool {
        RoutedPool::builder("postgres://app:secret@127.0.0.1:1/app")
            .replica("postgres://app:secret@127.0.0.1:2/app")
            .build()
            .unwrap()
    }

    fn kept(pool: &RoutedPool) -> usize {
        let id = pool.shared().id();
        BY_TEXT.with(|cache| cache.borrow().get(&id).map_or(0, HashMap::len))
    }

    #[test]
    fn a_text_is_classified_once_and_stays_what_it_is() {
        let pool = pool();
        let write: Arc<str> = Arc::from("UPDATE products SET price_cents = price_cents + 1");
        let read: Arc<str> = Arc::from("SELECT 1");
        let set: Arc<str> = Arc::from("SET search_path TO other");
        let before = classified();
        for _ in 0..3 {
            let class = class_of_text(pool.shared(), &write);
            assert!(class.write.is_some());
            assert!(!class.session.any());
            assert_eq!(class.operation, Some("UPDATE"));
            let class = class_of_text(pool.shared(), &read);
            assert!(class.write.is_none());
            assert_eq!(class.operation, Some("SELECT"));
            let class = class_of_text(pool.shared(), &set);
            assert!(class.write.is_some());
            assert!(class.session.any());
        }
        assert_eq!(
            classified() - before,
            3,
            "each text classified once, then found"
        );
        assert_eq!(kept(&pool), 3, "each text kept once");
    }

    #[test]
    fn the_cache_of_texts_is_bounded_per_pool_and_in_pools() {
        let pool = pool();
        for n in 0..TEXTS_KEPT + 10 {
            let sql: Arc<str> = Arc::from(format!("DELETE FROM t WHERE id = {n}"));
            assert!(class_of_text(pool.shared(), &sql).write.is_some());
        }
        assert!(kept(&pool) <= TEXTS_KEPT);
        assert!(
            kept(&pool) >= 10,
            "the texts after the last start-over are kept"
        );
        let pools: Vec<RoutedPool> = (0..POOLS_KEPT + 2).map(|_| self::pool()).collect();
        for other in &pools {
            class_of_text(other.shared(), &Arc::from("SELECT 1"));
        }
        BY_TEXT.with(|cache| assert!(cache.borrow().len() <= POOLS_KEPT));
        assert_eq!(
            kept(&pools[POOLS_KEPT + 1]),
            1,
            "the last pool's text is kept"
        );
    }

    #[test]
    fn a_long_text_is_classified_but_not_kept() {
        let pool = pool();
        let values = vec!["($1, $2)"; 1000].join(", ");
        let sql: Arc<str> = Arc::from(format!("INSERT INTO t (a, b) VALUES {values}"));
        assert!(sql.len() > LONGEST_KEPT);
        let before = classified();
        for _ in 0..2 {
            assert!(class_of_text(pool.shared(), &sql).write.is_some());
        }
        assert_eq!(classified() - before, 2, "classified each time");
        assert_eq!(kept(&pool), 0);
    }

    #[test]
    fn a_pool_s_texts_are_classified_by_its_own_classifier() {
        let plain = pool();
        let custom = RoutedPool::builder("postgres://app:secret@127.0.0.1:1/app")
            .replica("postgres://app:secret@127.0.0.1:2/app")
            .classifier(crate::Classifier::default().replica_safe_functions(["report_total"]))
            .build()
            .unwrap();
        // An unknown function may write; the custom pool was told this one does not.
        let sql: Arc<str> = Arc::from("SELECT report_total()");
        for _ in 0..2 {
            assert!(class_of_text(plain.shared(), &sql).write.is_some());
            assert!(class_of_text(custom.shared(), &sql).write.is_none());
        }
    }
}
