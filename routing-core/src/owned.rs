//! Statements rendered into an owned, `Send` form, so that a connection can be checked out (and a
//! read retried elsewhere) after diesel's borrowed query is gone.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use diesel::QueryResult;
use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{AstPass, Query, QueryBuilder, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use futures_util::future::Either;

use crate::servers::ServerSession;
use crate::servers::catalog::{TypeCache, lookup_type};

type TypeKey = (Option<String>, String);

/// The identity an owned statement shows diesel-async's statement cache: the original query's
/// static id, so that its prepared statement is found by type as the original's would be, or
/// none, so that it is found by its SQL.
pub(crate) trait Identity: 'static {
    /// `QueryId::QueryId` of the owned statement.
    type Id: 'static;
    /// `QueryId::HAS_STATIC_QUERY_ID` of the owned statement.
    const STATIC: bool;
}

/// The static id `Id` of a query whose SQL never changes.
pub(crate) struct StaticId<Id>(PhantomData<fn() -> Id>);

impl<Id: 'static> Identity for StaticId<Id> {
    type Id = Id;
    const STATIC: bool = true;
}

/// No static id: the statement cache goes by the SQL.
pub(crate) struct NoId;

impl Identity for NoId {
    type Id = ();
    const STATIC: bool = false;
}

/// A rendered statement with its binds, owned and `Send`, that runs on any server connection
/// and can run again on another one; custom type OIDs may still need a lookup.
pub(crate) struct OwnedQuery<I> {
    sql: Arc<str>,
    safe_to_cache: bool,
    binds: RawBytesBindCollector<Pg>,
    unresolved: Option<Unresolved>,
    identity: PhantomData<fn() -> I>,
}

impl<I: Identity> QueryFragment<Pg> for OwnedQuery<I> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if !self.safe_to_cache {
            pass.unsafe_to_cache_prepared();
        }
        pass.push_sql(&self.sql);
        pass.push_bind_collector_data::<RawBytesBindCollector<Pg>>(&self.binds)
    }
}

impl<I: Identity> QueryId for OwnedQuery<I> {
    type QueryId = I::Id;
    const HAS_STATIC_QUERY_ID: bool = I::STATIC;
}

impl<I> Query for OwnedQuery<I> {
    type SqlType = Untyped;
}

/// Placeholder OIDs handed out for custom types not in the cache yet, and where they sit.
struct Unresolved {
    /// Placeholder (oid, array oid) per type.
    placeholders: HashMap<TypeKey, (u32, u32)>,
    /// (bind index, byte offset) of placeholder OIDs serialized inside bind values (arrays,
    /// records of custom types).
    in_bytes: Vec<(usize, usize)>,
}

/// The OID handed out in the first collection pass for every unknown type.
const UNKNOWN_OID: u32 = 0;
/// The second pass numbers unknown types from here down, far from real OIDs.
const PLACEHOLDER_BASE: u32 = u32::MAX - 1;

impl<I: Identity> OwnedQuery<I> {
    /// Collects the binds of `query`, rendered as `rendered`.
    pub(crate) fn new(
        query: &dyn QueryFragment<Pg>,
        rendered: Rendered,
        types: &Arc<TypeCache>,
    ) -> QueryResult<Self> {
        let Rendered { sql, safe_to_cache } = rendered;
        let mut first = CacheLookup {
            types: Arc::clone(types),
            placeholders: None,
            missing: false,
        };
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut binds, &mut first, &Pg)?;
        if !first.missing {
            return Ok(OwnedQuery {
                sql,
                safe_to_cache,
                binds,
                unresolved: None,
                identity: PhantomData,
            });
        }
        // Some custom type is not cached: collect again with a distinct placeholder per type and
        // compare the bytes of the two passes to find placeholders serialized inside values.
        let mut second = CacheLookup {
            types: Arc::clone(types),
            placeholders: Some(HashMap::new()),
            missing: false,
        };
        let mut numbered = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut numbered, &mut second, &Pg)?;
        let placeholders = second.placeholders.unwrap_or_default();
        let issued: Vec<u32> = placeholders.values().flat_map(|(o, a)| [*o, *a]).collect();
        let mut in_bytes = Vec::new();
        for (index, (zeroed, numbered)) in binds.binds.iter().zip(&numbered.binds).enumerate() {
            let (Some(zeroed), Some(numbered)) = (zeroed, numbered) else {
                continue;
            };
            for (offset, (a, b)) in zeroed.windows(4).zip(numbered.windows(4)).enumerate() {
                let b = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                if a == UNKNOWN_OID.to_be_bytes() && issued.contains(&b) {
                    in_bytes.push((index, offset));
                }
            }
        }
        Ok(OwnedQuery {
            sql,
            safe_to_cache,
            binds: numbered,
            unresolved: Some(Unresolved {
                placeholders,
                in_bytes,
            }),
            identity: PhantomData,
        })
    }

    /// Collects the binds of `query`, rendered as `rendered`, with `types` looking up the OIDs
    /// of custom types (a synchronous session, which asks its server at once): nothing is left
    /// to resolve.
    #[cfg(feature = "sync")]
    pub(crate) fn collected(
        query: &dyn QueryFragment<Pg>,
        rendered: Rendered,
        types: &mut (dyn PgMetadataLookup + 'static),
    ) -> QueryResult<Self> {
        let Rendered { sql, safe_to_cache } = rendered;
        let mut binds = RawBytesBindCollector::<Pg>::new();
        query.collect_binds(&mut binds, types, &Pg)?;
        Ok(OwnedQuery {
            sql,
            safe_to_cache,
            binds,
            unresolved: None,
            identity: PhantomData,
        })
    }

    /// The rendered SQL.
    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    /// The rendered SQL, shared.
    pub(crate) fn shared_sql(&self) -> &Arc<str> {
        &self.sql
    }

    /// The query's static id, if it has one.
    pub(crate) fn static_id(&self) -> Option<std::any::TypeId> {
        <Self as QueryId>::query_id()
    }

    /// Looks up the OIDs of custom types that were not cached, on `conn`, and patches them in.
    /// Ready at once when there are none, as for most statements; the lookup's future is boxed,
    /// so that the future of every statement does not carry it.
    pub(crate) fn resolve<'a>(
        &'a mut self,
        conn: &'a mut ServerSession,
        types: &'a TypeCache,
    ) -> impl Future<Output = QueryResult<()>> + Send + 'a {
        match self.unresolved {
            None => Either::Left(std::future::ready(Ok(()))),
            Some(_) => Either::Right(Box::pin(self.look_up_types(conn, types))),
        }
    }

    async fn look_up_types(
        &mut self,
        conn: &mut ServerSession,
        types: &TypeCache,
    ) -> QueryResult<()> {
        let Some(pending) = self.unresolved.as_ref() else {
            return Ok(());
        };
        // Every lookup first: a failed one leaves the placeholders for a retry elsewhere.
        let mut real = HashMap::new();
        for ((schema, name), (oid, array_oid)) in &pending.placeholders {
            let found = lookup_type(conn, schema.as_deref(), name).await?;
            types
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((schema.clone(), name.clone()), found);
            real.insert(*oid, found.0);
            real.insert(*array_oid, found.1);
        }
        let Some(unresolved) = self.unresolved.take() else {
            return Ok(());
        };
        for metadata in &mut self.binds.metadata {
            let (oid, array_oid) = oids(metadata);
            *metadata = PgTypeMetadata::new(
                real.get(&oid).copied().unwrap_or(oid),
                real.get(&array_oid).copied().unwrap_or(array_oid),
            );
        }
        for (index, offset) in unresolved.in_bytes {
            if let Some(bytes) = self.binds.binds[index]
                .as_mut()
                .and_then(|b| b.get_mut(offset..offset + 4))
            {
                let placeholder = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                if let Some(oid) = real.get(&placeholder) {
                    bytes.copy_from_slice(&oid.to_be_bytes());
                }
            }
        }
        Ok(())
    }
}

/// A statement's SQL, rendered once (and, for a static query, kept).
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    pub(crate) sql: Arc<str>,
    pub(crate) safe_to_cache: bool,
}

impl Rendered {
    /// Renders `query`.
    pub(crate) fn of(query: &dyn QueryFragment<Pg>) -> QueryResult<Self> {
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg)?;
        Ok(Rendered {
            sql: Arc::from(builder.finish()),
            safe_to_cache: query.is_safe_to_cache_prepared(&Pg)?,
        })
    }
}

fn oids(metadata: &PgTypeMetadata) -> (u32, u32) {
    (
        metadata.oid().unwrap_or(UNKNOWN_OID),
        metadata.array_oid().unwrap_or(UNKNOWN_OID),
    )
}

/// Answers type lookups from the pool's cache; unknown types get placeholders.
struct CacheLookup {
    types: Arc<TypeCache>,
    /// `None` in the first pass (every unknown type gets [`UNKNOWN_OID`]); in the second pass,
    /// the numbered placeholders handed out.
    placeholders: Option<HashMap<TypeKey, (u32, u32)>>,
    missing: bool,
}

impl PgMetadataLookup for CacheLookup {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let key = (schema.map(str::to_owned), type_name.to_owned());
        if let Some((oid, array_oid)) = self
            .types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return PgTypeMetadata::new(*oid, *array_oid);
        }
        self.missing = true;
        let (oid, array_oid) = match &mut self.placeholders {
            None => (UNKNOWN_OID, UNKNOWN_OID),
            Some(placeholders) => {
                let next = PLACEHOLDER_BASE - 2 * u32::try_from(placeholders.len()).unwrap_or(0);
                *placeholders.entry(key).or_insert((next, next - 1))
            }
        };
        PgTypeMetadata::new(oid, array_oid)
    }
}
