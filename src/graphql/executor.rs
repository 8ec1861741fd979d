//! Runs operations: documents parsed and validated once, answers in the
//! order of their selection.
//!
//! A document is parsed once per query text and kept in a bounded cache.
//! Its first run (for each operation name and, when it declares variables,
//! each set of variable values) goes through every validation rule; a run
//! that raised no error marks that combination validated, and later runs
//! skip the rules that cannot change: only complexity and depth (which read
//! `first` and other variables) are computed again.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Data, Executor, Request, Response, ServerError, Variables};
use async_graphql_value::{ConstValue, Value as AstValue};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lru::LruCache;
use uuid::Uuid;

use super::AppSchema;
use super::live::LiveLogs;
use super::order::reorder;
use super::plan::{ListPlan, projects_field};
use super::query::{DEFAULT_PAGE, MAX_PAGE};
use crate::domain::Ctx;
use crate::domain::deployments::Deployer;
use bytes::Bytes;

/// Documents the cache holds.
const DOCUMENTS: usize = 512;
/// Longest query text the cache keeps (longer ones are parsed every time).
const MAX_CACHED_TEXT: usize = 32 * 1024;
/// Validated operation/variable combinations remembered per document.
const VALIDATED_PER_DOCUMENT: usize = 64;

/// A parsed document and the runs of it that passed validation.
struct Document {
    doc: ExecutableDocument,
    /// Why the document may not run (too many fields), if it may not.
    refusal: Option<ServerError>,
    /// What a run costs against the rate limits.
    cost: u64,
    declares_variables: bool,
    validated: Mutex<HashSet<u64>>,
    /// The document as a written-through list, when it is one.
    direct: OnceLock<Option<Direct>>,
    /// The document as a written-through `logs` subscription, when it is one.
    live: OnceLock<Option<LiveLogs>>,
}

/// A query whose only field is `projects`: its response key, arguments and
/// the plan that writes its answer from the rows.
struct Direct {
    key: String,
    first: Option<AstValue>,
    after: Option<AstValue>,
    plan: ListPlan,
}

impl Direct {
    /// The plan of `doc`'s operation `name` (the only one it has).
    fn compile(doc: &ExecutableDocument, name: Option<&str>) -> Option<Direct> {
        let field = projects_field(doc, name)?;
        let mut first = None;
        let mut after = None;
        for (name, value) in &field.arguments {
            match name.node.as_str() {
                "first" => first = Some(value.node.clone()),
                "after" => after = Some(value.node.clone()),
                _ => return None,
            }
        }
        Some(Direct {
            key: field.response_key().node.to_string(),
            first,
            after,
            plan: ListPlan::connection(&field.selection_set.node, &doc.fragments)?,
        })
    }

    /// `first` and `after` with the request's variables, when valid (the
    /// executor answers anything else, errors included).
    fn arguments(&self, variables: &Variables) -> Option<(u64, Option<Uuid>)> {
        let value = |v: &Option<AstValue>| -> Option<ConstValue> {
            match v {
                None => Some(ConstValue::Null),
                Some(v) => v
                    .clone()
                    .into_const_with(|name| variables.get(&name).cloned().ok_or(()))
                    .ok(),
            }
        };
        let first = match value(&self.first)? {
            ConstValue::Null => DEFAULT_PAGE as u64,
            ConstValue::Number(n) => n.as_u64().filter(|n| (1..=MAX_PAGE as u64).contains(n))?,
            _ => return None,
        };
        let after = match value(&self.after)? {
            ConstValue::Null => None,
            ConstValue::String(s) => Some(Uuid::parse_str(&s).ok()?),
            _ => return None,
        };
        Some((first, after))
    }
}

struct Inner {
    /// Every rule.
    strict: AppSchema,
    /// The same schema with only the rules that depend on the run.
    fast: AppSchema,
    documents: Mutex<LruCache<String, Arc<Document>>>,
    hasher: RandomState,
    /// Answers written by the direct path (for tests and diagnostics).
    direct_answers: AtomicU64,
    /// Follows log lines for subscriptions written straight from the lines.
    deployer: Option<Deployer>,
}

/// The schema behind the API, with its document cache.
#[derive(Clone)]
pub struct Core(Arc<Inner>);

impl Core {
    /// `strict` validates with every rule, `fast` the same schema built
    /// with [`async_graphql::ValidationMode::Fast`].
    pub fn new(strict: AppSchema, fast: AppSchema, deployer: Option<Deployer>) -> Core {
        Core(Arc::new(Inner {
            strict,
            fast,
            documents: Mutex::new(LruCache::new(
                NonZeroUsize::new(DOCUMENTS).expect("non-zero"),
            )),
            hasher: RandomState::new(),
            direct_answers: AtomicU64::new(0),
            deployer,
        }))
    }

    /// How many answers (and subscriptions) the direct path wrote.
    pub fn direct_answers(&self) -> u64 {
        self.0.direct_answers.load(Ordering::Relaxed)
    }

    /// What running `query` costs against the rate limits (1 for a
    /// document that does not parse or is over the size limits: it runs
    /// nothing, and its error is answered as usual).
    pub fn cost(&self, query: &str) -> u64 {
        self.document(query)
            .map_or(1, |d| if d.refusal.is_some() { 1 } else { d.cost })
    }

    /// The schema, for introspection and export.
    pub fn schema(&self) -> &AppSchema {
        &self.0.strict
    }

    /// The parsed document for `text`, from the cache when it was seen.
    fn document(&self, text: &str) -> Result<Arc<Document>, ServerError> {
        if let Some(d) = self.0.documents.lock().expect("lock").get(text) {
            return Ok(d.clone());
        }
        let doc = async_graphql::parser::parse_query(text)?;
        let declares_variables = doc
            .operations
            .iter()
            .any(|(_, op)| !op.node.variable_definitions.is_empty());
        let (cost, refusal) = super::size::measure(&doc);
        let d = Arc::new(Document {
            refusal,
            cost,
            doc,
            declares_variables,
            validated: Mutex::default(),
            direct: OnceLock::new(),
            live: OnceLock::new(),
        });
        if text.len() <= MAX_CACHED_TEXT {
            self.0
                .documents
                .lock()
                .expect("lock")
                .put(text.to_string(), d.clone());
        }
        Ok(d)
    }

    /// The document of `request` when the executor has already run it
    /// cleanly with these variables.
    fn validated(&self, request: &Request) -> Option<Arc<Document>> {
        let d = self.document(&request.query).ok()?;
        let run = self.run_key(&d, request);
        let ok = d.validated.lock().expect("lock").contains(&run);
        ok.then_some(d)
    }

    /// The answer to a `projects` query written straight from the store's
    /// rows, for a run of the document the executor has already validated
    /// with these variables; `None` leaves the request to the executor.
    pub async fn execute_direct(
        &self,
        request: &Request,
        db: &crate::store::Reads,
        ctx: &Ctx,
    ) -> Option<Vec<u8>> {
        let d = self.validated(request)?;
        // Validated runs name the document's one operation, or none.
        let name = request.operation_name.as_deref();
        let direct = d
            .direct
            .get_or_init(|| Direct::compile(&d.doc, name))
            .as_ref()?;
        let (first, after) = direct.arguments(&request.variables)?;
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(b"{\"data\":{");
        serde_json::to_writer(&mut out, &direct.key).ok()?;
        out.push(b':');
        // A store error is reported by the executor's run.
        direct
            .plan
            .write_page(db, ctx, first, after, &mut out)
            .await
            .ok()?;
        out.extend_from_slice(b"}}");
        self.0.direct_answers.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// The answers to a `logs` subscription written straight from the
    /// lines (each line once per selection, however many follow), for a
    /// run of the document the executor has already validated with these
    /// variables; `None` leaves the request to the executor, which also
    /// answers every refusal (an unknown or foreign project, bad
    /// arguments).
    pub async fn follow_direct(
        &self,
        request: &Request,
        ctx: &Ctx,
    ) -> Option<BoxStream<'static, Bytes>> {
        let deployer = self.0.deployer.as_ref()?;
        let d = self.validated(request)?;
        let name = request.operation_name.as_deref();
        let live = d
            .live
            .get_or_init(|| LiveLogs::compile(&d.doc, name))
            .as_ref()?;
        let arguments = live.arguments(&request.variables)?;
        let lines = deployer
            .follow(ctx, &arguments.project_id, &arguments.args())
            .await
            .ok()?;
        self.0.direct_answers.fetch_add(1, Ordering::Relaxed);
        let plan = live.plan.clone();
        Some(lines.map(move |l| plan.render(&l)).boxed())
    }

    /// Whether the operation `request` selects is a mutation (false when
    /// the document does not parse or names no such operation).
    pub fn is_mutation(&self, request: &Request) -> bool {
        let Ok(d) = self.document(&request.query) else {
            return false;
        };
        let name = request.operation_name.as_deref();
        d.doc.operations.iter().any(|(n, op)| {
            op.node.ty == OperationType::Mutation
                && (name.is_none() || n.map(|n| n.as_str()) == name)
        })
    }

    /// The key of one validated run: its operation name and, when the
    /// document declares variables, their values.
    fn run_key(&self, d: &Document, request: &Request) -> u64 {
        let mut h = self.0.hasher.build_hasher();
        request.operation_name.hash(&mut h);
        if d.declares_variables {
            // The same values sent in another key order only miss.
            serde_json::to_string(&request.variables)
                .unwrap_or_default()
                .hash(&mut h);
        }
        h.finish()
    }

    /// Prepares `request`: attaches the parsed document and picks the
    /// schema whose rules it still needs.
    fn prepare(&self, mut request: Request) -> Prepared {
        let d = match self.document(&request.query) {
            Ok(d) => d,
            // The full path reports the syntax error as usual.
            Err(_) => {
                return Prepared {
                    request,
                    document: None,
                    schema: self.0.strict.clone(),
                    run: 0,
                    validated: false,
                };
            }
        };
        let run = self.run_key(&d, &request);
        let validated = d.validated.lock().expect("lock").contains(&run);
        request.set_parsed_query(d.doc.clone());
        Prepared {
            request,
            schema: if validated {
                self.0.fast.clone()
            } else {
                self.0.strict.clone()
            },
            document: Some(d),
            run,
            validated,
        }
    }
}

struct Prepared {
    request: Request,
    document: Option<Arc<Document>>,
    schema: AppSchema,
    run: u64,
    validated: bool,
}

impl Prepared {
    /// Puts the answer's fields in selection order and remembers a clean
    /// run as validated.
    fn finish(
        document: &Option<Arc<Document>>,
        operation: Option<&str>,
        run: u64,
        validated: bool,
        mut resp: Response,
    ) -> Response {
        if let Some(d) = document {
            if !validated && resp.errors.is_empty() {
                let mut set = d.validated.lock().expect("lock");
                if set.len() >= VALIDATED_PER_DOCUMENT {
                    set.clear();
                }
                set.insert(run);
            }
            reorder(&mut resp.data, &d.doc, operation);
        }
        resp
    }
}

impl Executor for Core {
    async fn execute(&self, request: Request) -> Response {
        let p = self.prepare(request);
        if let Some(e) = p.document.as_ref().and_then(|d| d.refusal.clone()) {
            return Response::from_errors(vec![e]);
        }
        let operation = p.request.operation_name.clone();
        let resp = p.schema.execute(p.request).await;
        Prepared::finish(&p.document, operation.as_deref(), p.run, p.validated, resp)
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let p = self.prepare(request);
        if let Some(e) = p.document.as_ref().and_then(|d| d.refusal.clone()) {
            return futures_util::stream::once(async move { Response::from_errors(vec![e]) })
                .boxed();
        }
        let operation = p.request.operation_name.clone();
        let (document, run, validated) = (p.document, p.run, p.validated);
        p.schema
            .execute_stream_with_session_data(p.request, session_data.unwrap_or_default())
            .map(move |resp| {
                Prepared::finish(&document, operation.as_deref(), run, validated, resp)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_cache_is_bounded() {
        let core = Core::new(super::super::bare(), super::super::bare(), None);
        for i in 0..(DOCUMENTS + 100) {
            core.document(&format!("{{ a{i}: viewer {{ role }} }}"))
                .unwrap();
        }
        assert_eq!(core.0.documents.lock().unwrap().len(), DOCUMENTS);
        // Too long to keep: parsed, answered, not cached.
        let long = format!("{{ viewer {{ role }} }}{}", " ".repeat(MAX_CACHED_TEXT));
        core.document(&long).unwrap();
        assert!(core.0.documents.lock().unwrap().get(&long).is_none());
    }
}
