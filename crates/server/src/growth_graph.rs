//! `GET …/growth/graph`: the growth graph — persons as nodes, "who brought whom" as edges (referrals not
//! rejected, accepted account invitations, share-link visits) — for the dashboard's graph view.
//!
//! - Without `person`: the project's newest edges.
//! - With `person=<distinct id>`: that person's neighbourhood — the chain of earliest edges up to the root (as
//!   `…/growth/path`) and everyone they brought, and everyone those brought, down `depth` levels (1–10, default 3).
//!   Children are found through every distinct id of a person. 404 when the distinct id has no person.
//! - `via` keeps one channel (`referral`, `invitation`, `share`); `limit` caps the edges (1–2000, default 500),
//!   `truncated` tells that more exist.
//!
//! Nodes are persons (`id` = person id) merged over their distinct ids; a sender that never sent an event has no
//! person and is its own node (`id` = `d:<distinct id>`, `person: null`). Edges name nodes by `id` and keep the
//! distinct ids they were recorded with.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_store::GraphEdge;
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::experiments::bounded_param;
use crate::state::AppState;

const CHANNELS: &[&str] = &["referral", "invitation", "share"];
const MAX_EDGES: i64 = 2000;
const MAX_DEPTH: i64 = 10;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{project_id}/growth/graph", get(graph))
}

#[derive(serde::Deserialize)]
struct GraphParams {
    person: Option<String>,
    depth: Option<i64>,
    via: Option<String>,
    limit: Option<i64>,
}

async fn graph(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<GraphParams>,
) -> Result<Json<Value>, ApiError> {
    const WHAT: &str = "growth graph";
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let limit = bounded_param(WHAT, "limit", params.limit, 500, MAX_EDGES)?;
    let depth = bounded_param(WHAT, "depth", params.depth, 3, MAX_DEPTH)?;
    let via = params.via.as_deref().filter(|v| !v.is_empty());
    if via.is_some_and(|v| !CHANNELS.contains(&v)) {
        return Err(ApiError::invalid_field(
            WHAT,
            "via",
            format!("must be one of {}", CHANNELS.join(", ")),
        ));
    }
    let person = params.person.as_deref().filter(|p| !p.is_empty());
    state.catch_up().await;
    let limit = limit as usize;
    let mut truncated = false;
    let mut edges: Vec<GraphEdge> = Vec::new();
    let mut center = None;
    match person {
        None => {
            edges = state
                .store
                .growth_edges(project_id, None, via, limit as u32 + 1)
                .await?;
        }
        Some(start) => {
            let Some(start_person) = state
                .store
                .person_ids_for(project_id, &[start])
                .await?
                .remove(start)
            else {
                return Err(ApiError::not_found(format!(
                    "no person with distinct id `{start}` in this project"
                )));
            };
            center = Some((start_person.clone(), start.to_owned()));
            let up = crate::growth::upstream(&state, project_id, start).await?;
            edges.extend(
                up.steps
                    .into_iter()
                    .filter(|e| via.is_none_or(|v| v == e.via)),
            );
            let mut seen: HashSet<String> = HashSet::from([start_person.clone()]);
            let mut frontier = vec![start_person];
            for _ in 0..depth {
                if frontier.is_empty() || edges.len() > limit {
                    break;
                }
                let refs: Vec<&str> = frontier.iter().map(String::as_str).collect();
                let senders: Vec<String> = state
                    .store
                    .distinct_ids_of_persons(project_id, &refs)
                    .await?
                    .into_values()
                    .flatten()
                    .collect();
                let room = limit + 1 - edges.len();
                let found = state
                    .store
                    .growth_edges(project_id, Some(&senders), via, room as u32)
                    .await?;
                let targets: Vec<&str> = found.iter().map(|e| e.to.as_str()).collect();
                let persons = state.store.person_ids_for(project_id, &targets).await?;
                frontier = found
                    .iter()
                    .filter_map(|e| persons.get(&e.to))
                    .filter(|p| seen.insert((*p).clone()))
                    .cloned()
                    .collect();
                edges.extend(found);
            }
        }
    }
    // The same edge can be met twice (an ancestor chain that loops back into the children).
    let mut unique = HashSet::new();
    edges.retain(|e| unique.insert((e.via.clone(), e.from.clone(), e.to.clone(), e.at.clone())));
    if edges.len() > limit {
        truncated = true;
        edges.truncate(limit);
    }
    Ok(Json(
        build(&state, project_id, edges, center, truncated).await?,
    ))
}

/// Nodes and edges of the answer: every distinct id resolved to its current person.
async fn build(
    state: &AppState,
    project_id: i64,
    edges: Vec<GraphEdge>,
    center: Option<(String, String)>,
    truncated: bool,
) -> Result<Value, ApiError> {
    let mut ids: Vec<&str> = edges
        .iter()
        .flat_map(|e| [e.from.as_str(), e.to.as_str()])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let persons = state.store.person_ids_for(project_id, &ids).await?;
    let key = |did: &str| match persons.get(did) {
        Some(uuid) => uuid.clone(),
        None => format!("d:{did}"),
    };
    struct Node {
        person: Option<String>,
        distinct_ids: Vec<String>,
        brought: u64,
        brought_by: u64,
    }
    let mut order: Vec<String> = Vec::new();
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut touch = |did: &str, k: String| -> String {
        let node = nodes.entry(k.clone()).or_insert_with(|| {
            order.push(k.clone());
            Node {
                person: persons.get(did).cloned(),
                distinct_ids: Vec::new(),
                brought: 0,
                brought_by: 0,
            }
        });
        if !node.distinct_ids.iter().any(|d| d == did) {
            node.distinct_ids.push(did.to_owned());
        }
        k
    };
    let mut out_edges = Vec::with_capacity(edges.len());
    let mut links = Vec::with_capacity(edges.len());
    for e in &edges {
        let from = touch(&e.from, key(&e.from));
        let to = touch(&e.to, key(&e.to));
        links.push((from.clone(), to.clone()));
        out_edges.push(json!({
            "from": from, "to": to, "from_distinct_id": e.from, "to_distinct_id": e.to,
            "via": e.via, "at": e.at, "context": e.context,
        }));
    }
    if let Some((c, did)) = &center {
        nodes.entry(c.clone()).or_insert_with(|| {
            order.push(c.clone());
            Node {
                person: Some(c.clone()),
                distinct_ids: vec![did.clone()],
                brought: 0,
                brought_by: 0,
            }
        });
    }
    let center_id = center.as_ref().map(|(c, _)| c.as_str());
    for (from, to) in links {
        if let Some(n) = nodes.get_mut(&from) {
            n.brought += 1;
        }
        if let Some(n) = nodes.get_mut(&to) {
            n.brought_by += 1;
        }
    }
    let out_nodes: Vec<Value> = order
        .iter()
        .map(|k| {
            let n = &nodes[k];
            json!({
                "id": k, "person": n.person, "distinct_ids": n.distinct_ids,
                "brought": n.brought, "brought_by": n.brought_by,
                "center": center_id == Some(k.as_str()),
            })
        })
        .collect();
    Ok(json!({
        "person": center.as_ref().map(|(_, did)| did),
        "center": center_id,
        "nodes": out_nodes,
        "edges": out_edges,
        "truncated": truncated,
    }))
}
