//! Reading groups (accounts) for the dashboard's account pages: the project's group types, a search over its
//! groups, one group with its members.

use serde::Serialize;
use serde_json::Value;

use crate::on_pool;
use crate::persons::PersonSummary;
use crate::{Result, Store};

/// A group type of the project (at most 5, indexed 0–4).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupType {
    pub group_type: String,
    pub index: i64,
}

/// A group as the account list and page show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupSummary {
    pub group_type: String,
    pub group_key: String,
    /// Empty when the group was never identified (`$groupidentify`): it is known only from events naming it.
    pub properties: Value,
    /// When it was first seen; `None` for a group known only from persons' links.
    pub created_at: Option<String>,
    /// Persons linked to it (through `$groups` on their events).
    pub members: i64,
}

type GroupRow = (String, String, Option<String>, Option<String>, i64);

fn summary(row: GroupRow) -> Result<GroupSummary> {
    let (group_type, group_key, properties, created_at, members) = row;
    Ok(GroupSummary {
        group_type,
        group_key,
        properties: match properties {
            Some(text) => serde_json::from_str(&text)?,
            None => Value::Object(Default::default()),
        },
        created_at,
        members,
    })
}

/// Groups are the identified ones (`groups`) and those only linked to persons (`person_groups`), by type name, with
/// their member counts: one pass over the project's links (grouped), not a count per group.
const GROUPS: &str = "WITH counts AS MATERIALIZED (
         SELECT pg.group_type_index AS group_type_index, pg.group_key AS group_key, COUNT(*) AS members
           FROM person_groups pg JOIN persons p ON p.id = pg.person_id
          WHERE p.project_id = $1
          GROUP BY pg.group_type_index, pg.group_key),
     known AS (
         SELECT group_type_index, group_key FROM groups WHERE project_id = $1
         UNION
         SELECT group_type_index, group_key FROM counts)
     SELECT t.group_type AS group_type, k.group_key AS group_key, g.properties AS properties,
            g.created_at AS created_at, COALESCE(c.members, 0) AS members
       FROM known k
       JOIN group_types t ON t.project_id = $1 AND t.group_type_index = k.group_type_index
       LEFT JOIN groups g ON g.project_id = $1 AND g.group_type_index = k.group_type_index
                         AND g.group_key = k.group_key
       LEFT JOIN counts c ON c.group_type_index = k.group_type_index AND c.group_key = k.group_key";

impl Store {
    /// The project's group types, by index.
    pub async fn group_types(&self, project_id: i64) -> Result<Vec<GroupType>> {
        let rows: Vec<(String, i64)> = on_pool!(self, |c| sqlx::query_as(
            "SELECT group_type, group_type_index FROM group_types WHERE project_id = $1
             ORDER BY group_type_index",
        )
        .bind(project_id)
        .fetch_all(c)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(group_type, index)| GroupType { group_type, index })
            .collect())
    }

    /// Groups of the project (of `group_type` when given) whose key, or `name` property, contains `search`
    /// (case-insensitive), by most members then key; at most `limit`.
    pub async fn search_groups(
        &self,
        project_id: i64,
        group_type: Option<&str>,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<GroupSummary>> {
        let b = self.dialect();
        let in_key = b.contains("lower(group_key)", "$3");
        let in_name = b.contains(
            &format!("lower(COALESCE({}, ''))", b.json_text("properties", "name")),
            "$3",
        );
        let rows: Vec<GroupRow> = on_pool!(self, |c| sqlx::query_as(&format!(
            "SELECT * FROM ({GROUPS}) AS gs
              WHERE ($2 IS NULL OR group_type = $2)
                AND ($3 IS NULL OR {in_key} OR {in_name})
              ORDER BY members DESC, group_type, group_key LIMIT $4"
        ))
        .bind(project_id)
        .bind(group_type)
        .bind(search.map(str::to_lowercase))
        .bind(i64::from(limit))
        .fetch_all(c)
        .await)?;
        rows.into_iter().map(summary).collect()
    }

    /// One group (`None`: neither identified nor linked to any person).
    pub async fn group(
        &self,
        project_id: i64,
        group_type: &str,
        group_key: &str,
    ) -> Result<Option<GroupSummary>> {
        let row: Option<GroupRow> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT t.group_type, $3, g.properties, g.created_at,
                    (SELECT COUNT(*) FROM person_groups pg JOIN persons p ON p.id = pg.person_id
                      WHERE pg.group_type_index = t.group_type_index AND pg.group_key = $3 AND p.project_id = $1)
               FROM group_types t
               LEFT JOIN groups g ON g.project_id = $1 AND g.group_type_index = t.group_type_index
                                 AND g.group_key = $3
              WHERE t.project_id = $1 AND t.group_type = $2",
        )
        .bind(project_id)
        .bind(group_type)
        .bind(group_key)
        .fetch_optional(c)
        .await
        })?;
        // A type exists for every project that has one; the group only when identified or linked.
        row.filter(|r| r.3.is_some() || r.4 > 0)
            .map(summary)
            .transpose()
    }

    /// Persons linked to a group, newest first, at most `limit`, each with every distinct id.
    pub async fn group_members(
        &self,
        project_id: i64,
        group_type: &str,
        group_key: &str,
        limit: u32,
    ) -> Result<Vec<PersonSummary>> {
        let ids = self.dialect().concat_ids("d.distinct_id");
        let rows: Vec<(String, String, String, Option<String>)> = on_pool!(self, |c| {
            sqlx::query_as(&format!(
            "SELECT p.uuid, p.properties, p.created_at,
                    (SELECT {ids} FROM person_distinct_ids d WHERE d.person_id = p.id)
               FROM person_groups pg
               JOIN persons p ON p.id = pg.person_id
               JOIN group_types t ON t.project_id = p.project_id AND t.group_type_index = pg.group_type_index
              WHERE p.project_id = $1 AND t.group_type = $2 AND pg.group_key = $3
              ORDER BY p.id DESC LIMIT $4",
        ))
        .bind(project_id)
        .bind(group_type)
        .bind(group_key)
        .bind(i64::from(limit))
        .fetch_all(c)
        .await
        })?;
        rows.into_iter()
            .map(|(id, properties, created_at, dids)| {
                Ok(PersonSummary {
                    id,
                    properties: serde_json::from_str(&properties)?,
                    distinct_ids: crate::persons::split_ids(dids),
                    created_at,
                })
            })
            .collect()
    }
}
