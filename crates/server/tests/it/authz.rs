//! The authorization matrix: every native route (from the OpenAPI table, which a unit test keeps equal to the
//! routes the server registers) × every kind of caller — each role's session, a member restricted to another
//! project, the organization's full key, a read-only key, keys lacking the route's area, a key of another project
//! and of another organization, the project's public SDK key, no credential — asserting allowed or denied.
//!
//! The expectations are written here from the documented rules (roles in `auth.rs`, areas in `keys.rs`), not
//! derived from the server's own check. Allowed means the request got past authorization: any answer but 401, 403,
//! or 404 `project_not_found`/`organization_not_found` (bodies are empty objects and ids point at nothing, so an
//! allowed call answers 400/404/409 without changing anything that matters). Nothing may answer 5xx.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::users::{Who, PASSWORD};
use crate::TestServer;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

/// What a caller is, for the expectations.
#[derive(Clone, Debug)]
enum Kind {
    /// A user's session with a role in the organization and access to the project under test (or not).
    Session {
        role: Role,
        reaches_project: bool,
    },
    /// A personal key: its scopes (`None`: all), whether it reaches the project, its organization-level role.
    Key {
        scopes: Option<Vec<String>>,
        reaches_project: bool,
        same_org: bool,
        org_role: Role,
    },
    Nobody,
}

/// The area of a path after `/api/v1/projects/{id}` (the first segment; the project itself otherwise).
fn area(rest: &str) -> &'static str {
    let first = rest.trim_start_matches('/').split('/').next().unwrap_or("");
    flywheel_server::keys::AREAS
        .iter()
        .find(|(_, segments)| segments.contains(&first))
        .map_or("projects", |(a, _)| a)
}

/// Whether a project request only reads: GET, or a POST that computes (insights, evaluate, power, backtest).
fn reads(method: &str, rest: &str) -> bool {
    method == "get"
        || (method == "post"
            && (rest.starts_with("/insights/")
                || rest == "/evaluate"
                || rest.starts_with("/power")
                || rest.ends_with("/backtest")))
}

/// The least role that may make a project request.
fn project_min_role(area: &str, read: bool) -> Role {
    match (area, read) {
        ("projects" | "features" | "insights" | "persons" | "experiments" | "growth", true) => {
            Role::Viewer
        }
        ("webhooks" | "audit" | "keys", true) => Role::Member,
        ("features" | "insights" | "experiments" | "growth" | "keys", false) => Role::Member,
        _ => Role::Admin,
    }
}

fn key_grants(scopes: &Option<Vec<String>>, area: &str, read: bool) -> bool {
    let Some(scopes) = scopes else { return true };
    scopes.iter().any(|s| {
        s == "*" || *s == format!("{area}:write") || (read && *s == format!("{area}:read"))
    })
}

/// Whether `kind` may make the request.
fn expected(kind: &Kind, method: &str, path: &str) -> bool {
    if let Some(rest) = path.strip_prefix("/api/v1/projects/{project_id}") {
        let (area, read) = (area(rest), reads(method, rest));
        return match kind {
            Kind::Session {
                role,
                reaches_project,
            } => *reaches_project && *role >= project_min_role(area, read),
            Kind::Key {
                scopes,
                reaches_project,
                ..
            } => *reaches_project && key_grants(scopes, area, read),
            Kind::Nobody => false,
        };
    }
    if path == "/api/v1/organizations" {
        return match kind {
            Kind::Session { .. } => true,
            Kind::Key { .. } => method == "get",
            Kind::Nobody => false,
        };
    }
    let rest = path
        .strip_prefix("/api/v1/organizations/{org_id}")
        .expect("an organization path");
    let min = match (method, rest) {
        ("get", "" | "/projects" | "/members") => Role::Viewer,
        _ => Role::Admin,
    };
    let (area, read) = (
        if rest.starts_with("/projects") {
            "projects"
        } else {
            "organization"
        },
        method == "get",
    );
    match kind {
        Kind::Session { role, .. } => *role >= min,
        Kind::Key {
            scopes,
            same_org,
            org_role,
            ..
        } => *same_org && *org_role >= min && key_grants(scopes, area, read),
        Kind::Nobody => false,
    }
}

fn fill(path: &str, project: i64, org: i64) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{project_id}" => project.to_string(),
            "{org_id}" => org.to_string(),
            "{kind}" => "trends".to_owned(),
            "{id}" | "{user_id}" => "999999".to_owned(),
            s if s.starts_with('{') => "matrix-missing".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn denied(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || (status == StatusCode::NOT_FOUND
            && matches!(
                body["code"].as_str(),
                Some("project_not_found" | "organization_not_found")
            ))
}

async fn new_key(t: &TestServer, project: i64, scopes: Option<Vec<String>>) -> String {
    let mut body = json!({"name": "matrix"});
    if let Some(s) = scopes {
        body["scopes"] = json!(s);
    }
    let (s, v, _) = t
        .call(
            &Who::Key(t.personal_key.clone()),
            "POST",
            &format!("/api/v1/projects/{project}/api-keys"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_native_route_checks_role_scope_and_project() {
    let t = TestServer::start().await;
    let (project, org) = (t.project_id, t.organization_id);
    let owner = t.setup_owner("owner@example.com", PASSWORD).await;
    let (s, other, _) = t
        .call(
            &owner,
            "POST",
            &format!("/api/v1/organizations/{org}/projects"),
            Some(json!({"name": "Other"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let other_project = other["id"].as_i64().unwrap();

    let mut callers: Vec<(String, Who, Kind)> = vec![(
        "owner".into(),
        owner.clone(),
        Kind::Session {
            role: Role::Owner,
            reaches_project: true,
        },
    )];
    for (name, role) in [
        ("admin", Role::Admin),
        ("member", Role::Member),
        ("viewer", Role::Viewer),
    ] {
        let who = t
            .join(&owner, &format!("{name}@example.com"), name, None)
            .await;
        callers.push((
            name.into(),
            who,
            Kind::Session {
                role,
                reaches_project: true,
            },
        ));
    }
    let outsider = t
        .join(
            &owner,
            "outsider@example.com",
            "admin",
            Some(json!([other_project])),
        )
        .await;
    callers.push((
        "admin of another project only".into(),
        outsider,
        Kind::Session {
            role: Role::Admin,
            reaches_project: false,
        },
    ));
    callers.push((
        "organization key".into(),
        Who::Key(t.personal_key.clone()),
        Kind::Key {
            scopes: None,
            reaches_project: true,
            same_org: true,
            org_role: Role::Owner,
        },
    ));
    let all_areas: Vec<&str> = flywheel_server::keys::AREAS
        .iter()
        .map(|(a, _)| *a)
        .chain(["organization"])
        .collect();
    let read_only: Vec<String> = all_areas.iter().map(|a| format!("{a}:read")).collect();
    callers.push((
        "read-only key".into(),
        Who::Key(new_key(&t, project, Some(read_only.clone())).await),
        Kind::Key {
            scopes: Some(read_only),
            reaches_project: true,
            same_org: true,
            // Keys restricted to a project count as viewers of the organization.
            org_role: Role::Viewer,
        },
    ));
    for missing in &all_areas {
        let scopes: Vec<String> = all_areas
            .iter()
            .filter(|a| *a != missing)
            .map(|a| format!("{a}:write"))
            .collect();
        callers.push((
            format!("key without {missing}"),
            Who::Key(new_key(&t, project, Some(scopes.clone())).await),
            Kind::Key {
                scopes: Some(scopes),
                reaches_project: true,
                same_org: true,
                org_role: Role::Viewer,
            },
        ));
    }
    callers.push((
        "key of another project".into(),
        Who::Key(new_key(&t, other_project, None).await),
        Kind::Key {
            scopes: None,
            reaches_project: false,
            same_org: true,
            org_role: Role::Viewer,
        },
    ));
    let foreign = t
        .server()
        .state
        .store
        .bootstrap("Foreign", "Foreign project")
        .await
        .unwrap();
    callers.push((
        "key of another organization".into(),
        Who::Key(foreign.personal_api_key),
        Kind::Key {
            scopes: None,
            reaches_project: false,
            same_org: false,
            org_role: Role::Owner,
        },
    ));
    // The public SDK key of the project captures and evaluates only.
    callers.push((
        "public project key".into(),
        Who::Key(t.token.clone()),
        Kind::Nobody,
    ));
    callers.push(("no credential".into(), Who::Nobody, Kind::Nobody));

    let routes: Vec<(String, String)> = flywheel_server::openapi::operations()
        .into_iter()
        .map(|(m, p, _, _)| (m, p))
        .filter(|(_, p)| {
            p.starts_with("/api/v1/projects/") || p.starts_with("/api/v1/organizations")
        })
        .collect();
    assert!(routes.len() >= 120, "{} routes", routes.len());

    let mut cells = 0;
    let mut wrong = Vec::new();
    let mut allowed_count = 0;
    for (method, path) in &routes {
        let url = fill(path, project, org);
        let body = matches!(method.as_str(), "post" | "put" | "patch").then(|| json!({}));
        for (name, who, kind) in &callers {
            let want = expected(kind, method, path);
            let (status, answer, _) = t
                .call(who, &method.to_uppercase(), &url, body.clone())
                .await;
            cells += 1;
            allowed_count += usize::from(want);
            let got_denied = denied(status, &answer);
            if status.is_server_error() || got_denied == want {
                wrong.push(format!(
                    "{} {path} as {name}: expected {}, got {status} {answer}",
                    method.to_uppercase(),
                    if want { "allowed" } else { "denied" },
                ));
            }
        }
    }
    println!(
        "authorization matrix: {} routes × {} callers = {cells} requests ({allowed_count} allowed)",
        routes.len(),
        callers.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Both answers occur for every kind of caller that has any access.
    assert!(allowed_count > cells / 4 && allowed_count < cells * 3 / 4);
}
