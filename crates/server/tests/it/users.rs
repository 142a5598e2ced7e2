//! Users, sessions, roles, team invitations and organizations.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

/// A credential a test request is sent with.
#[derive(Clone, Debug)]
pub enum Who {
    Key(String),
    Session {
        cookie: String,
        csrf: String,
    },
    /// A session cookie without the CSRF header.
    CookieOnly(String),
    Nobody,
}

impl TestServer {
    /// A request to any path with a credential; JSON body when given.
    pub async fn call(
        &self,
        who: &Who,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, HeaderMap) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        match who {
            Who::Key(k) => req = req.header("authorization", format!("Bearer {k}")),
            Who::Session { cookie, csrf } => {
                req = req
                    .header("cookie", format!("flywheel_session={cookie}"))
                    .header("x-csrf-token", csrf)
            }
            Who::CookieOnly(cookie) => {
                req = req.header("cookie", format!("flywheel_session={cookie}"))
            }
            Who::Nobody => {}
        }
        let body = body
            .map(|b| Body::from(b.to_string()))
            .unwrap_or_else(Body::empty);
        self.send(req.body(body).unwrap()).await
    }

    /// Signs in; the session.
    pub async fn login(&self, email: &str, password: &str) -> Who {
        let (s, v, h) = self
            .call(
                &Who::Nobody,
                "POST",
                "/api/v1/auth/login",
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "login {email}: {v}");
        session_of(&v, &h)
    }

    /// Makes the first owner with the bootstrap key; their session.
    pub async fn setup_owner(&self, email: &str, password: &str) -> Who {
        let (s, v, h) = self
            .call(
                &Who::Key(self.personal_key.clone()),
                "POST",
                "/api/v1/auth/setup",
                Some(json!({"email": email, "password": password, "name": "Owner"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "setup: {v}");
        session_of(&v, &h)
    }

    /// Invites `email` with `role` (and project access) as `by`, accepts with `password`; the new session.
    pub async fn join(&self, by: &Who, email: &str, role: &str, projects: Option<Value>) -> Who {
        let mut body = json!({"email": email, "role": role});
        if let Some(p) = projects {
            body["projects"] = p;
        }
        let (s, v, _) = self
            .call(
                by,
                "POST",
                &format!("/api/v1/organizations/{}/invitations", self.organization_id),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "invite {email}: {v}");
        let token = v["token"].as_str().unwrap().to_owned();
        let (s, v, h) = self
            .call(
                &Who::Nobody,
                "POST",
                "/api/v1/auth/accept-invitation",
                Some(json!({"token": token, "password": PASSWORD, "name": email})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "accept {email}: {v}");
        assert_eq!(v["role"], role);
        session_of(&v, &h)
    }
}

pub const PASSWORD: &str = "a long enough password";

pub fn session_of(body: &Value, headers: &HeaderMap) -> Who {
    let cookie = headers
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap();
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("flywheel_session=")
        .expect("the session cookie");
    Who::Session {
        cookie: value.to_owned(),
        csrf: body["csrf_token"]
            .as_str()
            .expect("a CSRF token")
            .to_owned(),
    }
}

fn cookie_of(who: &Who) -> String {
    match who {
        Who::Session { cookie, .. } => cookie.clone(),
        _ => panic!("not a session"),
    }
}

#[tokio::test]
async fn owners_invite_members_whose_roles_decide_what_they_may_do() {
    let t = TestServer::start().await;
    let org = t.organization_id;
    let p = format!("/api/v1/projects/{}", t.project_id);

    // The first owner, made with the bootstrap key; a second setup is refused.
    let (s, v, _) = t
        .call(
            &Who::Key(t.personal_key.clone()),
            "POST",
            "/api/v1/auth/setup",
            Some(json!({"email": "not-an-email", "password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"], "{v}");
    let owner = t.setup_owner("owner@example.com", PASSWORD).await;
    let (s, v, _) = t
        .call(
            &Who::Key(t.personal_key.clone()),
            "POST",
            "/api/v1/auth/setup",
            Some(json!({"email": "second@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_set_up"))
    );

    // The session works; me shows the organization and role.
    let (s, me, _) = t.call(&owner, "GET", "/api/v1/auth/me", None).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], "owner@example.com");
    assert_eq!(me["organizations"][0]["role"], "owner");
    assert_eq!(me["organizations"][0]["organization_id"], org);

    // A cookie-authenticated change needs the CSRF token; a read does not.
    let cookie_only = Who::CookieOnly(cookie_of(&owner));
    let (s, v, _) = t
        .call(
            &cookie_only,
            "POST",
            &format!("{p}/features"),
            Some(json!({"key": "f1"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_token_invalid"))
    );
    assert_eq!(
        t.call(&cookie_only, "GET", &format!("{p}/features"), None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, v, _) = t
        .call(
            &owner,
            "POST",
            &format!("{p}/features"),
            Some(json!({"key": "f1", "value_type": "boolean", "default_value": false})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Team invitations: an admin, a member, a viewer, and a member restricted to another project.
    let (s, other) = {
        let (s, v, _) = t
            .call(
                &owner,
                "POST",
                &format!("/api/v1/organizations/{org}/projects"),
                Some(json!({"name": "Second"})),
            )
            .await;
        (s, v)
    };
    assert_eq!(s, StatusCode::CREATED, "{other}");
    assert!(other["api_key"].as_str().unwrap().starts_with("fwpub_"));
    let other_project = other["id"].as_i64().unwrap();
    let admin = t.join(&owner, "admin@example.com", "admin", None).await;
    let member = t.join(&admin, "member@example.com", "member", None).await;
    let viewer = t.join(&admin, "viewer@example.com", "viewer", None).await;
    let outsider = t
        .join(
            &admin,
            "outsider@example.com",
            "member",
            Some(json!([other_project])),
        )
        .await;
    // An admin cannot invite an owner; an invitation is used once.
    let (s, v, _) = t
        .call(
            &admin,
            "POST",
            &format!("/api/v1/organizations/{org}/invitations"),
            Some(json!({"email": "boss@example.com", "role": "owner"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role"))
    );
    let (s, inv, _) = t
        .call(
            &owner,
            "POST",
            &format!("/api/v1/organizations/{org}/invitations"),
            Some(json!({"email": "twice@example.com", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // The token says what it is for before it is used.
    let (s, info, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/invitation",
            Some(json!({"token": inv["token"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{info}");
    assert_eq!(
        (
            info["email"].as_str(),
            info["role"].as_str(),
            info["status"].as_str(),
            info["user_exists"].as_bool()
        ),
        (
            Some("twice@example.com"),
            Some("viewer"),
            Some("pending"),
            Some(false)
        )
    );
    assert_eq!(info["organization_id"], org);
    let (s, _, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/invitation",
            Some(json!({"token": "fwinv_nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let accept = json!({"token": inv["token"], "password": PASSWORD});
    assert_eq!(
        t.call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/accept-invitation",
            Some(accept.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, v, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/accept-invitation",
            Some(accept),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("invitation_not_found"))
    );
    let (_, info, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/invitation",
            Some(json!({"token": inv["token"]})),
        )
        .await;
    assert_eq!(
        (info["status"].as_str(), info["user_exists"].as_bool()),
        (Some("accepted"), Some(true))
    );
    // Inviting an existing member is a conflict.
    let (s, _, _) = t
        .call(
            &owner,
            "POST",
            &format!("/api/v1/organizations/{org}/invitations"),
            Some(json!({"email": "Member@Example.com", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // What each role may do in the project.
    let feature = json!({"key": "f2", "value_type": "boolean", "default_value": false});
    let (s, v, _) = t.call(&viewer, "GET", &format!("{p}/features"), None).await;
    assert_eq!(
        (s, v["results"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(1))
    );
    let (s, v, _) = t
        .call(
            &viewer,
            "POST",
            &format!("{p}/features"),
            Some(feature.clone()),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role")),
        "{v}"
    );
    let (s, v, _) = t
        .call(
            &viewer,
            "POST",
            &format!("{p}/insights/trends"),
            Some(json!({"series": [{"event": "$pageview"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "a viewer runs insights: {v}");
    assert_eq!(
        t.call(&member, "POST", &format!("{p}/features"), Some(feature))
            .await
            .0,
        StatusCode::CREATED
    );
    let hook = json!({"url": "https://hooks.example.com/x", "topics": ["feature.*"]});
    let (s, v, _) = t
        .call(
            &member,
            "POST",
            &format!("{p}/webhooks"),
            Some(hook.clone()),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role")),
        "{v}"
    );
    assert_eq!(
        t.call(&member, "GET", &format!("{p}/webhooks"), None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, v, _) = t
        .call(&member, "PATCH", &p, Some(json!({"name": "Renamed"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        t.call(&admin, "PATCH", &p, Some(json!({"name": "Renamed"})))
            .await
            .0,
        StatusCode::OK
    );
    // The restricted member sees the other project, not this one (as if it did not exist).
    let (s, v, _) = t
        .call(&outsider, "GET", &format!("{p}/features"), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("project_not_found"))
    );
    let (s, v, _) = t
        .call(
            &outsider,
            "GET",
            &format!("/api/v1/organizations/{org}/projects"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<i64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [other_project]);
    assert_eq!(
        t.call(
            &outsider,
            "GET",
            &format!("/api/v1/projects/{other_project}/features"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );

    // A member's key acts with at most the member's role, and follows role changes.
    let (s, v, _) = t
        .call(
            &member,
            "POST",
            &format!("{p}/api-keys"),
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a member must list scopes: {v}");
    let (s, v, _) = t
        .call(
            &member,
            "POST",
            &format!("{p}/api-keys"),
            Some(json!({"name": "mine", "scopes": ["webhooks:write"]})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "cannot grant beyond the role: {v}"
    );
    let (s, v, _) = t
        .call(
            &member,
            "POST",
            &format!("{p}/api-keys"),
            Some(json!({"name": "mine", "scopes": ["features:write"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let member_key = Who::Key(v["key"].as_str().unwrap().to_owned());
    let member_key_id = v["id"].as_i64().unwrap();
    let flag = json!({"key": "f3", "value_type": "boolean", "default_value": false});
    assert_eq!(
        t.call(
            &member_key,
            "POST",
            &format!("{p}/features"),
            Some(flag.clone())
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // Members list their own keys only; admins all.
    let (_, mine, _) = t.call(&member, "GET", &format!("{p}/api-keys"), None).await;
    let mine: Vec<i64> = mine["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect();
    assert_eq!(mine, [member_key_id]);
    let (_, all, _) = t.call(&admin, "GET", &format!("{p}/api-keys"), None).await;
    assert!(all["results"].as_array().unwrap().len() >= 2);
    let member_id = {
        let (_, v, _) = t.call(&member, "GET", "/api/v1/auth/me", None).await;
        v["user"]["id"].as_i64().unwrap()
    };
    let (s, v, _) = t
        .call(
            &admin,
            "PATCH",
            &format!("/api/v1/organizations/{org}/members/{member_id}"),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(
        (s, v["role"].as_str()),
        (StatusCode::OK, Some("viewer")),
        "{v}"
    );
    let (s, v, _) = t
        .call(
            &member_key,
            "PUT",
            &format!("{p}/features/f3"),
            Some(json!({"description": "x", "version": 1})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role")),
        "{v}"
    );
    assert_eq!(
        t.call(&member_key, "GET", &format!("{p}/features"), None)
            .await
            .0,
        StatusCode::OK
    );

    // Owners are protected: an admin cannot demote one, and the last owner cannot go.
    let owner_id = {
        let (_, v, _) = t.call(&owner, "GET", "/api/v1/auth/me", None).await;
        v["user"]["id"].as_i64().unwrap()
    };
    let member_path = |id: i64| format!("/api/v1/organizations/{org}/members/{id}");
    let (s, _, _) = t
        .call(
            &admin,
            "PATCH",
            &member_path(owner_id),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v, _) = t
        .call(
            &owner,
            "PATCH",
            &member_path(owner_id),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_owner"))
    );
    let (s, _, _) = t.call(&owner, "DELETE", &member_path(owner_id), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v, _) = t
        .call(
            &viewer,
            "PATCH",
            &member_path(member_id),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_role"))
    );

    // Removing a member revokes their keys and their access.
    assert_eq!(
        t.call(&admin, "DELETE", &member_path(member_id), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        t.call(&member_key, "GET", &format!("{p}/features"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, v, _) = t.call(&member, "GET", &format!("{p}/features"), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("project_not_found"))
    );
    let (s, v, _) = t
        .call(
            &member,
            "GET",
            &format!("/api/v1/organizations/{org}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("organization_not_found"))
    );

    // The organization's audit log names every change, and only admins read it.
    let (s, log, _) = t
        .call(
            &owner,
            "GET",
            &format!("/api/v1/organizations/{org}/audit?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let actions: Vec<&str> = log["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "member.added",
        "project.created",
        "invitation.created",
        "member.joined",
        "member.updated",
        "member.removed",
    ] {
        assert!(actions.contains(&action), "{action} missing in {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| **a == "member.joined").count(), 5);
    // The demotion's entry shows what changed.
    let demoted = log["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "member.updated")
        .unwrap();
    assert_eq!(demoted["diff"][0]["path"], "role", "{demoted}");
    assert_eq!(
        (
            demoted["diff"][0]["before"].as_str(),
            demoted["diff"][0]["after"].as_str()
        ),
        (Some("member"), Some("viewer"))
    );
    assert_eq!(
        t.call(
            &viewer,
            "GET",
            &format!("/api/v1/organizations/{org}/audit"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Feature changes made in a session name the user.
    let (_, audit, _) = t
        .call(
            &owner,
            "GET",
            &format!("{p}/audit?entity_type=feature"),
            None,
        )
        .await;
    let actors: Vec<&str> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(
        actors.contains(&format!("user:{owner_id}").as_str()),
        "{actors:?}"
    );

    // Organizations made by a user: they own it, others do not see it.
    let (s, v, _) = t
        .call(
            &viewer,
            "POST",
            "/api/v1/organizations",
            Some(json!({"name": "Viewer's own"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let own = v["id"].as_i64().unwrap();
    let (_, v, _) = t.call(&viewer, "GET", "/api/v1/organizations", None).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(
        t.call(&admin, "GET", &format!("/api/v1/organizations/{own}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (s, _, _) = t
        .call(
            &Who::Key(t.personal_key.clone()),
            "POST",
            "/api/v1/organizations",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "organizations are made by users");
}

#[tokio::test]
async fn sign_in_is_limited_cookies_are_strict_and_passwords_change() {
    // On SQLite whatever the suite's backend: it reads the stored hashes from the database file.
    let t = TestServer::start_with(|c| c.metadata_url = None).await;
    let owner = t.setup_owner("owner@example.com", PASSWORD).await;
    let org = t.organization_id;

    // The cookie: HttpOnly, SameSite, Secure behind an HTTPS proxy; no-store answers.
    let req = Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .header("x-forwarded-proto", "https")
        .body(Body::from(
            json!({"email": "OWNER@example.com", "password": PASSWORD}).to_string(),
        ))
        .unwrap();
    let (s, body, h) = t.send(req).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let cookie = h.get("set-cookie").unwrap().to_str().unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=604800",
    ] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    let second = session_of(&body, &h);
    let (_, plain, ph) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/login",
            Some(json!({"email": "owner@example.com", "password": PASSWORD})),
        )
        .await;
    assert!(
        !ph.get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Secure"),
        "plain HTTP"
    );
    let third = session_of(&plain, &ph);

    // Changing the password needs the current one and ends the other sessions.
    let (s, v, _) = t
        .call(
            &second,
            "POST",
            "/api/v1/auth/password",
            Some(json!({"current_password": PASSWORD, "new_password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let new_password = "an even longer new password";
    let (s, v, _) = t
        .call(
            &second,
            "POST",
            "/api/v1/auth/password",
            Some(json!({"current_password": PASSWORD, "new_password": "owner@example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) = t
        .call(
            &second,
            "POST",
            "/api/v1/auth/password",
            Some(json!({"current_password": "not it at all", "new_password": new_password})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v, _) = t
        .call(
            &second,
            "POST",
            "/api/v1/auth/password",
            Some(json!({"current_password": PASSWORD, "new_password": new_password})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        t.call(&second, "GET", "/api/v1/auth/me", None).await.0,
        StatusCode::OK
    );
    for gone in [&owner, &third] {
        let (s, v, _) = t.call(gone, "GET", "/api/v1/auth/me", None).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_session"))
        );
    }
    let (s, _, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/login",
            Some(json!({"email": "owner@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old password is gone");
    let fresh = t.login("owner@example.com", new_password).await;

    // Logout ends the session and clears the cookie.
    let (s, _, h) = t.call(&fresh, "POST", "/api/v1/auth/logout", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(h
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        t.call(&fresh, "GET", "/api/v1/auth/me", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Wrong password and unknown email answer alike.
    let bad = |email: &str| json!({"email": email, "password": "wrong password!"});
    let (s1, v1, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/login",
            Some(bad("owner@example.com")),
        )
        .await;
    let (s2, v2, _) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/login",
            Some(bad("nobody@example.com")),
        )
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(v1, v2);
    // Five failures per email (a successful sign-in forgets earlier failures), then 429 with
    // Retry-After even with the right password.
    for _ in 0..4 {
        assert_eq!(
            t.call(
                &Who::Nobody,
                "POST",
                "/api/v1/auth/login",
                Some(bad("owner@example.com"))
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (s, v, h) = t
        .call(
            &Who::Nobody,
            "POST",
            "/api/v1/auth/login",
            Some(json!({"email": "owner@example.com", "password": new_password})),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let wait: u64 = h
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    let metrics = t.call(&Who::Nobody, "GET", "/metrics", None).await.1;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("flywheel_login_failures_total 8"), "{text}");
    assert!(text.contains(r#"flywheel_rate_limited_total{scope="login"} 1"#));

    // Passwords are stored as argon2id hashes, sessions and invitations as digests.
    let db = rusqlite::Connection::open(t.dir.path().join("metadata.db")).unwrap();
    let hash: String = db
        .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let sessions: Vec<String> = db
        .prepare("SELECT token_hash FROM sessions")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        !sessions.is_empty()
            && sessions
                .iter()
                .all(|h| h.len() == 64 && !h.starts_with("fwses_"))
    );
    // Sign-ins are in the organization's audit log.
    let (_, log, _) = t
        .call(
            &second,
            "GET",
            &format!("/api/v1/organizations/{org}/audit"),
            None,
        )
        .await;
    let actions: Vec<&str> = log["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"user.signed_in") && actions.contains(&"user.password_changed"),
        "{actions:?}"
    );

    // Sessions slide: one last seen over an hour ago is extended on use (never past 30 days from its start), and
    // an expired one is refused.
    db.execute(
        "UPDATE sessions SET last_seen_at = '2020-01-01T00:00:00.000000Z', expires_at = '2999-01-01T00:00:00.000000Z'",
        [],
    )
    .unwrap();
    assert_eq!(
        t.call(&second, "GET", "/api/v1/auth/me", None).await.0,
        StatusCode::OK
    );
    let (created, expires): (String, String) = db
        .query_row(
            "SELECT created_at, expires_at FROM sessions ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(&created).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    let days = (expires - created).num_hours() as f64 / 24.0;
    assert!(
        (6.9..=7.1).contains(&days),
        "extended to 7 days from now: {days}"
    );
    db.execute(
        "UPDATE sessions SET expires_at = '2020-01-01T00:00:00.000000Z'",
        [],
    )
    .unwrap();
    let (s, v, _) = t.call(&second, "GET", "/api/v1/auth/me", None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_session"))
    );
}
