//! Dashboards of saved insights (`…/dashboards`: list, create, get, update, archive, `versions`, `diff`; see
//! [`crate::definitions`]). A dashboard is a definition document: its name, description and insights, each a name,
//! a kind and the body of `POST …/insights/{kind}`, validated as that kind's query when saved
//! ([`flywheel_query::dashboard`]). The web dashboard runs each insight when the dashboard is opened.

use axum::Router;
use flywheel_query::dashboard::parse_dashboard;

use crate::definitions::Kind;
use crate::state::AppState;

static DASHBOARDS: Kind = Kind {
    kind: "dashboard",
    what: "dashboard",
    parse: |body| parse_dashboard(body).map(|d| (d.key.clone(), d.name.clone(), d.to_json())),
    changed: |_| {},
};

pub fn router() -> Router<AppState> {
    crate::definitions::routes("/api/v1/projects/{project_id}/dashboards", &DASHBOARDS)
}
