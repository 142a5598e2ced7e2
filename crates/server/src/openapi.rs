//! The OpenAPI 3.1 document of the HTTP API, generated from [`OPERATIONS`] (and the capture routes' own tables),
//! served at `GET /api/v1/openapi.json` and committed as `docs/openapi.json`. Two tests keep it true: every route
//! the server's sources register is in the table and every entry is a registered route (the sources are scanned),
//! and the committed copy equals the generated document (`flywheel openapi > docs/openapi.json` refreshes it).
//!
//! Bodies are described as JSON objects (each endpoint validates its own and answers every problem by field); every
//! error has one shape, [`error_schema`]: `{"type", "code", "message", "errors"?}` with a stable `code`.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::state::AppState;

/// The kinds served by [`crate::definitions::routes`] (list, create, get, update, archive, versions, diff).
pub const DEFINITION_KINDS: [(&str, &str, &str); 5] = [
    ("metrics", "experiments", "experiment metric"),
    ("referral-programs", "growth", "referral program"),
    ("trials", "trials and PQL", "trial"),
    ("pql-models", "trials and PQL", "PQL model"),
    ("dashboards", "insights", "dashboard"),
];

const P: &str = "/api/v1/projects/{project_id}";

/// Every operation besides the capture routes and the definition kinds: (method, path after the project prefix
/// when it starts with `~`, tag, summary).
pub const OPERATIONS: &[(&str, &str, &str, &str)] = &[
    // Projects, events, persons, insights
    ("get", "~", "projects", "Get the project's settings"),
    (
        "patch",
        "~",
        "projects",
        "Change the project's name, time zone, test-account filters, ingestion settings or retention_days",
    ),
    (
        "post",
        "~/retention/run",
        "projects",
        "Drop the project's events older than its retention_days now (audited)",
    ),
    (
        "get",
        "~/events",
        "events",
        "List events, newest first (filters: event, distinct_id, person_id, after, before, limit)",
    ),
    (
        "get",
        "~/persons",
        "persons",
        "Search persons by distinct id, email or name (search, limit up to 100; newest first)",
    ),
    (
        "get",
        "~/persons/{distinct_id}",
        "persons",
        "Get a person by one of their distinct ids",
    ),
    (
        "get",
        "~/persons/{distinct_id}/export",
        "persons",
        "GDPR export of everything held about a person (NDJSON or JSON)",
    ),
    (
        "delete",
        "~/persons/{distinct_id}",
        "persons",
        "GDPR erasure of a person: events, identity, growth records (ledger rows tombstoned); audited with counts only",
    ),
    (
        "post",
        "~/insights/{kind}",
        "insights",
        "Run an insight: trends, funnel, retention, stickiness or lifecycle",
    ),
    ("get", "~/cohorts", "cohorts", "List cohorts"),
    (
        "post",
        "~/cohorts",
        "cohorts",
        "Create a static or dynamic cohort",
    ),
    ("get", "~/cohorts/{cohort_id}", "cohorts", "Get a cohort"),
    (
        "patch",
        "~/cohorts/{cohort_id}",
        "cohorts",
        "Change a cohort",
    ),
    (
        "delete",
        "~/cohorts/{cohort_id}",
        "cohorts",
        "Delete a cohort",
    ),
    (
        "get",
        "~/cohorts/{cohort_id}/persons",
        "cohorts",
        "List a cohort's persons",
    ),
    (
        "post",
        "~/cohorts/{cohort_id}/members",
        "cohorts",
        "Add persons to a static cohort",
    ),
    (
        "delete",
        "~/cohorts/{cohort_id}/members",
        "cohorts",
        "Remove persons from a static cohort",
    ),
    // Features
    ("get", "~/features", "features", "List features"),
    ("post", "~/features", "features", "Create a feature"),
    ("get", "~/features/{key}", "features", "Get a feature"),
    (
        "put",
        "~/features/{key}",
        "features",
        "Replace a feature's definition (optimistic concurrency with `version`)",
    ),
    (
        "delete",
        "~/features/{key}",
        "features",
        "Archive a feature",
    ),
    ("get", "~/environments", "features", "List environments"),
    (
        "post",
        "~/environments",
        "features",
        "Create an environment",
    ),
    (
        "get",
        "~/sdk-connections",
        "features",
        "List SDK client keys",
    ),
    (
        "post",
        "~/sdk-connections",
        "features",
        "Create an SDK client key for an environment",
    ),
    (
        "delete",
        "~/sdk-connections/{id}",
        "features",
        "Revoke an SDK client key",
    ),
    ("get", "~/saved-groups", "features", "List saved groups"),
    ("post", "~/saved-groups", "features", "Create a saved group"),
    (
        "get",
        "~/saved-groups/{key}",
        "features",
        "Get a saved group",
    ),
    (
        "put",
        "~/saved-groups/{key}",
        "features",
        "Replace a saved group",
    ),
    (
        "delete",
        "~/saved-groups/{key}",
        "features",
        "Delete a saved group",
    ),
    (
        "post",
        "~/evaluate",
        "features",
        "Evaluate features for attributes, with the rule that matched",
    ),
    (
        "get",
        "~/audit",
        "audit",
        "The audit log (filters: entity_type, entity_id, actor, action, after, before, limit)",
    ),
    (
        "get",
        "~/outbox",
        "audit",
        "The outbox: announcements of changes, oldest first (topic, after, limit)",
    ),
    // Experiments
    ("get", "~/experiments", "experiments", "List experiments"),
    (
        "post",
        "~/experiments",
        "experiments",
        "Create an experiment",
    ),
    (
        "get",
        "~/experiments/{key}",
        "experiments",
        "Get an experiment",
    ),
    (
        "patch",
        "~/experiments/{key}",
        "experiments",
        "Change an experiment",
    ),
    (
        "delete",
        "~/experiments/{key}",
        "experiments",
        "Archive an experiment",
    ),
    (
        "post",
        "~/experiments/{key}/decision",
        "experiments",
        "Decide an experiment (ship a variation or stop)",
    ),
    (
        "post",
        "~/experiments/{key}/{action}",
        "experiments",
        "Start or stop an experiment (`start`, `stop`)",
    ),
    (
        "get",
        "~/experiments/{key}/{action}",
        "experiments",
        "An experiment's `results` or `exposures`",
    ),
    (
        "post",
        "~/power",
        "experiments",
        "Plan an experiment: sample size, duration or detectable effect",
    ),
    ("get", "~/rollouts", "rollouts", "List guarded rollouts"),
    ("post", "~/rollouts", "rollouts", "Create a guarded rollout"),
    (
        "get",
        "~/rollouts/{key}",
        "rollouts",
        "Get a rollout with its last check",
    ),
    ("patch", "~/rollouts/{key}", "rollouts", "Change a rollout"),
    (
        "delete",
        "~/rollouts/{key}",
        "rollouts",
        "Archive a rollout",
    ),
    (
        "post",
        "~/rollouts/{key}/{action}",
        "rollouts",
        "Start, check, pause, resume or roll back a rollout",
    ),
    // Growth
    (
        "get",
        "~/referral-programs/{key}/codes",
        "growth",
        "List a program's referral codes",
    ),
    (
        "post",
        "~/referral-programs/{key}/codes",
        "growth",
        "Create a referrer's code (generated or vanity)",
    ),
    (
        "get",
        "~/referral-programs/{key}/referrals",
        "growth",
        "List a program's referrals (filters: referrer, status, limit)",
    ),
    (
        "get",
        "~/referral-programs/{key}/leaderboard",
        "growth",
        "Referrers ranked by qualified referrals",
    ),
    (
        "post",
        "~/referral-programs/{key}/referrals/{id}/{action}",
        "growth",
        "Approve or reject a held referral",
    ),
    ("get", "~/rewards", "growth", "List reward ledger entries"),
    (
        "post",
        "~/rewards",
        "growth",
        "Write a reward (idempotency key)",
    ),
    (
        "get",
        "~/rewards/balances",
        "growth",
        "Reward balances per unit and status",
    ),
    (
        "post",
        "~/rewards/{id}/{action}",
        "growth",
        "Approve, fulfil or reverse a reward",
    ),
    ("get", "~/share-links", "growth", "List share links"),
    ("post", "~/share-links", "growth", "Create a share link"),
    (
        "get",
        "~/growth/graph",
        "growth",
        "The growth graph: persons and who brought whom (newest edges, or one person's neighbourhood)",
    ),
    (
        "get",
        "~/groups",
        "growth",
        "Search accounts (groups) by key or name, with the project's group types",
    ),
    (
        "get",
        "~/groups/{group_type}/{group_key}",
        "growth",
        "Get an account (group) with its properties and members",
    ),
    (
        "get",
        "~/invitations",
        "growth",
        "List invitations to every account of the project (status filter, paging)",
    ),
    (
        "get",
        "~/growth/path",
        "growth",
        "The chain of edges that brought a person",
    ),
    (
        "get",
        "~/growth/k-factor",
        "growth",
        "K-factor and viral cycle time per cohort and channel",
    ),
    (
        "get",
        "~/groups/{group_type}/{group_key}/invitations",
        "growth",
        "List a group's invitations",
    ),
    (
        "post",
        "~/groups/{group_type}/{group_key}/invitations",
        "growth",
        "Invite someone to a group",
    ),
    (
        "put",
        "~/groups/{group_type}/{group_key}/domains/{domain}",
        "growth",
        "Verify an email domain for auto-join",
    ),
    (
        "post",
        "~/invitations/accept",
        "growth",
        "Accept an invitation with its token",
    ),
    (
        "post",
        "~/invitations/auto-join",
        "growth",
        "Join the group of a verified email domain",
    ),
    (
        "post",
        "~/invitations/{id}/{action}",
        "growth",
        "Resend or revoke an invitation",
    ),
    (
        "post",
        "~/trials/{key}/transitions",
        "trials and PQL",
        "Record a trial transition from a backend",
    ),
    (
        "get",
        "~/trials/{key}/report",
        "trials and PQL",
        "Trial→paid report per start cohort",
    ),
    (
        "get",
        "~/trials/{key}/entities",
        "trials and PQL",
        "Entities of a trial with their lifecycle",
    ),
    (
        "get",
        "~/pql-models/{key}/scores",
        "trials and PQL",
        "Scores under a PQL model, highest first",
    ),
    (
        "get",
        "~/pql-models/{key}/scores/{entity}",
        "trials and PQL",
        "One entity's score with its explanation",
    ),
    (
        "post",
        "~/pql-models/{key}/score",
        "trials and PQL",
        "Score a PQL model now",
    ),
    (
        "post",
        "~/pql-models/{key}/backtest",
        "trials and PQL",
        "Backtest a PQL model on history",
    ),
    // Platform
    (
        "get",
        "~/webhooks",
        "webhooks",
        "List webhook subscriptions",
    ),
    (
        "post",
        "~/webhooks",
        "webhooks",
        "Subscribe an endpoint to outbox topics (the answer carries the secret)",
    ),
    ("get", "~/webhooks/{id}", "webhooks", "Get a subscription"),
    (
        "patch",
        "~/webhooks/{id}",
        "webhooks",
        "Change a subscription",
    ),
    (
        "delete",
        "~/webhooks/{id}",
        "webhooks",
        "Delete a subscription with its delivery log",
    ),
    (
        "post",
        "~/webhooks/{id}/rotate-secret",
        "webhooks",
        "Replace the signing secret (the new one is in the answer, shown once)",
    ),
    (
        "get",
        "~/webhooks/{id}/deliveries",
        "webhooks",
        "The delivery log (status: pending, delivered, dead)",
    ),
    (
        "get",
        "~/webhooks/{id}/deliveries/{delivery_id}",
        "webhooks",
        "A delivery with its attempts",
    ),
    (
        "post",
        "~/webhooks/{id}/deliveries/{delivery_id}/replay",
        "webhooks",
        "Send a dead or delivered message again",
    ),
    (
        "get",
        "~/api-keys",
        "platform",
        "Personal API keys that reach the project (never their text)",
    ),
    (
        "post",
        "~/api-keys",
        "platform",
        "Create a personal API key restricted to the project, with scopes and expiry (shown once)",
    ),
    (
        "delete",
        "~/api-keys/{id}",
        "platform",
        "Revoke a personal API key",
    ),
    ("get", "/api/v1/openapi.json", "platform", "This document"),
    // Users, sessions, organizations and members
    (
        "post",
        "/api/v1/auth/setup",
        "users",
        "Create the first owner of the organization of the bootstrap key (signs in)",
    ),
    (
        "post",
        "/api/v1/auth/login",
        "users",
        "Sign in with email and password: sets the session cookie, answers the CSRF token",
    ),
    ("post", "/api/v1/auth/logout", "users", "End the session"),
    (
        "get",
        "/api/v1/auth/me",
        "users",
        "The signed-in user (or API key), their organizations and the CSRF token",
    ),
    (
        "post",
        "/api/v1/auth/password",
        "users",
        "Change the password (ends the user's other sessions)",
    ),
    (
        "post",
        "/api/v1/auth/accept-invitation",
        "users",
        "Accept a team invitation (creates the user, or checks an existing user's password) and sign in",
    ),
    (
        "post",
        "/api/v1/auth/invitation",
        "users",
        "What a team invitation token is for: organization, email, role, status, whether the user exists",
    ),
    (
        "get",
        "/api/v1/organizations",
        "organizations",
        "The caller's organizations and roles",
    ),
    (
        "post",
        "/api/v1/organizations",
        "organizations",
        "Create an organization owned by the signed-in user",
    ),
    (
        "get",
        "/api/v1/organizations/{org_id}",
        "organizations",
        "An organization and the caller's role in it",
    ),
    (
        "get",
        "/api/v1/organizations/{org_id}/projects",
        "organizations",
        "The organization's projects the caller may open",
    ),
    (
        "post",
        "/api/v1/organizations/{org_id}/projects",
        "organizations",
        "Create a project (admin); answers its public SDK key once",
    ),
    (
        "get",
        "/api/v1/organizations/{org_id}/members",
        "organizations",
        "Members with their roles and project access",
    ),
    (
        "patch",
        "/api/v1/organizations/{org_id}/members/{user_id}",
        "organizations",
        "Change a member's role or project access (admin; owners by an owner)",
    ),
    (
        "delete",
        "/api/v1/organizations/{org_id}/members/{user_id}",
        "organizations",
        "Remove a member (or leave); their keys in the organization are revoked",
    ),
    (
        "get",
        "/api/v1/organizations/{org_id}/invitations",
        "organizations",
        "Team invitations and their status (admin)",
    ),
    (
        "post",
        "/api/v1/organizations/{org_id}/invitations",
        "organizations",
        "Invite someone by email with a role (admin); answers the token once",
    ),
    (
        "delete",
        "/api/v1/organizations/{org_id}/invitations/{id}",
        "organizations",
        "Revoke a pending team invitation",
    ),
    (
        "get",
        "/api/v1/organizations/{org_id}/audit",
        "organizations",
        "The organization's audit log, newest first (admin)",
    ),
    // Serving flags
    (
        "get",
        "/api/features/{client_key}",
        "serving",
        "GrowthBook SDK payload for a client key",
    ),
    (
        "get",
        "/sub/{client_key}",
        "serving",
        "GrowthBook SDK stream of payload changes (server-sent events)",
    ),
    (
        "post",
        "/ofrep/v1/evaluate/flags",
        "serving",
        "OFREP bulk evaluation",
    ),
    (
        "post",
        "/ofrep/v1/evaluate/flags/{key}",
        "serving",
        "OFREP evaluation of one flag",
    ),
    (
        "get",
        "/ofrep/v1/events/{key}",
        "serving",
        "Stream of flag changes for OFREP web providers",
    ),
    ("post", "/flags", "serving", "PostHog remote evaluation"),
    ("post", "/decide", "serving", "PostHog `/decide` (v3/v4)"),
    (
        "get",
        "/array/{token}/config",
        "serving",
        "PostHog browser SDK remote configuration (JSON)",
    ),
    (
        "get",
        "/array/{token}/config.js",
        "serving",
        "PostHog browser SDK remote configuration (script)",
    ),
    // Growth links, operations
    (
        "get",
        "/r/{code}",
        "growth",
        "Public referral link: records the click and redirects",
    ),
    (
        "get",
        "/s/{token}",
        "growth",
        "Public share link: records the view and redirects",
    ),
    ("get", "/healthz", "operations", "Liveness"),
    ("get", "/readyz", "operations", "Readiness"),
    ("get", "/metrics", "operations", "Prometheus metrics"),
];

/// The shape of every error body.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "code", "message"],
        "properties": {
            "type": {"type": "string", "enum": ["invalid_request", "authentication_error", "permission_error", "not_found", "server_error"]},
            "code": {"type": "string", "description": "A stable machine-readable code (`validation_error`, `invalid_token`, `rate_limited`, …)."},
            "message": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
                "description": "Every problem of a request body, by field."},
        },
    })
}

fn full_path(path: &str) -> String {
    match path.strip_prefix('~') {
        Some(rest) => format!("{P}{rest}"),
        None => path.to_owned(),
    }
}

/// Every documented (method, path), capture routes and definition kinds included.
pub fn operations() -> Vec<(String, String, String, String)> {
    let mut out: Vec<(String, String, String, String)> = OPERATIONS
        .iter()
        .map(|(m, p, t, s)| (m.to_string(), full_path(p), t.to_string(), s.to_string()))
        .collect();
    for (kind, tag, what) in DEFINITION_KINDS {
        let base = format!("{P}/{kind}");
        let item = format!("{base}/{{key}}");
        for (m, p, s) in [
            (
                "get",
                base.clone(),
                format!("List {what}s (`archived=true` for the archived ones)"),
            ),
            ("post", base.clone(), format!("Create a {what}")),
            ("get", item.clone(), format!("Get a {what}")),
            (
                "patch",
                item.clone(),
                format!("Change a {what} (optimistic concurrency with `version`)"),
            ),
            ("delete", item.clone(), format!("Archive a {what}")),
            (
                "get",
                format!("{item}/versions"),
                format!("Every version of a {what} with its changes"),
            ),
            (
                "get",
                format!("{item}/diff"),
                format!("The changes between two versions of a {what}"),
            ),
        ] {
            out.push((m.into(), p, tag.into(), s));
        }
    }
    for (path, _) in crate::capture::POSTHOG_ROUTES {
        out.push((
            "post".into(),
            path.into(),
            "capture".into(),
            "PostHog capture (also GET with `data`)".into(),
        ));
    }
    for (path, _, _) in crate::capture::SEGMENT_ROUTES {
        out.push((
            "post".into(),
            path.into(),
            "capture".into(),
            "Segment capture".into(),
        ));
    }
    out
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    let path = match path.strip_prefix(P) {
        Some(rest) => {
            id.push_str("Project");
            rest
        }
        None => path,
    };
    for part in path
        .split(['/', '-', '.', '{', '}', '_'])
        .filter(|p| !p.is_empty())
    {
        let mut c = part.chars();
        if let Some(first) = c.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(c);
        }
    }
    id
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, tag, summary) in operations() {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if matches!(name, "project_id" | "org_id") {
                    json!({"type": "integer", "minimum": 1})
                } else {
                    json!({"type": "string", "minLength": 1})
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        let native = path.starts_with("/api/v1/projects")
            || path.starts_with("/api/v1/organizations")
            || matches!(
                path.as_str(),
                "/api/v1/auth/setup"
                    | "/api/v1/auth/logout"
                    | "/api/v1/auth/me"
                    | "/api/v1/auth/password"
            );
        let mut op = json!({
            "operationId": operation_id(&method, &path),
            "tags": [tag],
            "summary": summary,
            "responses": {
                "2XX": {"description": "Success", "content": {"application/json": {"schema": {}}}},
                "4XX": {"$ref": "#/components/responses/Error"},
            },
        });
        if !params.is_empty() {
            op["parameters"] = json!(params);
        }
        if matches!(method.as_str(), "post" | "put" | "patch") {
            op["requestBody"] = json!({
                "required": method != "post" || !native || !path.contains("/{action}"),
                "content": {"application/json": {"schema": {"type": "object"}}},
            });
        }
        op["security"] = if native {
            json!([{"personalKey": []}, {"session": []}])
        } else {
            json!([])
        };
        paths
            .entry(path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object")
            .insert(method, op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Flywheel API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Capture (PostHog and Segment compatible), flag serving (GrowthBook, PostHog, OFREP) and the native API of Flywheel. Native endpoints take a personal API key as a bearer token or a signed-in session cookie; bodies are JSON objects validated by the server, every problem reported by field in the one error shape.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "personalKey": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "flywheel_session",
                            "description": "The dashboard's session (POST /api/v1/auth/login); writes also need the X-CSRF-Token header."},
            },
            "schemas": {"Error": error_schema()},
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
        "paths": paths,
    })
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(|| async { Json(document()) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The (method, path) pairs the server's sources register with a literal path; `on(…)` routes (capture, PostHog
    /// flags: GET, POST and OPTIONS) count as POST.
    fn registered() -> BTreeSet<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let method = regex::Regex::new(r"(?:^|[^A-Za-z_])(get|post|put|patch|delete)\(").unwrap();
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Not the tests (this one names `.route(` in its scanner).
            let mut rest = text.split("#[cfg(test)]").next().unwrap_or_default();
            while let Some(i) = rest.find(".route(") {
                let after = &rest[i + ".route(".len()..];
                // The balanced argument list of this call.
                let mut depth = 1;
                let mut end = after.len();
                for (j, c) in after.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let args = &after[..end];
                rest = &after[end..];
                let Some(literal) = args.trim_start().strip_prefix('"') else {
                    continue;
                };
                let Some(close) = literal.find('"') else {
                    continue;
                };
                let route = &literal[..close];
                let handlers = &literal[route.len() + 1..];
                if handlers.contains("on(methods") {
                    if !route.ends_with('/') {
                        out.insert(("post".to_owned(), route.to_owned()));
                    }
                    continue;
                }
                for m in method.captures_iter(handlers) {
                    out.insert((m[1].to_owned(), route.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn every_registered_route_is_documented_and_every_documented_one_exists() {
        let documented: BTreeSet<(String, String)> = operations()
            .into_iter()
            .map(|(m, p, _, _)| (m, p))
            .collect();
        let registered = registered();
        assert!(
            registered.len() > 80,
            "the scan finds the routes: {}",
            registered.len()
        );
        let missing: Vec<_> = registered.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes without documentation: {missing:?}"
        );
        // Documented but not found by the scan: only the generated ones (capture tables, definition kinds).
        let generated = |p: &str| {
            crate::capture::POSTHOG_ROUTES.iter().any(|(c, _)| *c == p)
                || crate::capture::SEGMENT_ROUTES
                    .iter()
                    .any(|(c, _, _)| *c == p)
                || DEFINITION_KINDS
                    .iter()
                    .any(|(k, _, _)| p.starts_with(&format!("{P}/{k}")))
        };
        let extra: Vec<_> = documented
            .iter()
            .filter(|(_, p)| !generated(p))
            .filter(|x| !registered.contains(*x))
            .collect();
        assert!(
            extra.is_empty(),
            "documented routes the server does not register: {extra:?}"
        );
    }

    #[test]
    fn the_committed_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
                .unwrap_or(Value::Null);
        assert!(
            committed == document(),
            "docs/openapi.json is stale: run `cargo run -p flywheel -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut seen = BTreeSet::new();
        for (m, p, _, _) in operations() {
            assert!(seen.insert(operation_id(&m, &p)), "{m} {p}");
        }
    }
}
