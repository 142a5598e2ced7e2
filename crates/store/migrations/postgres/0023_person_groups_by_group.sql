-- PostgreSQL twin of sqlite/0023_person_groups_by_group.sql. Members of a group (the dashboard's account pages):
-- person_groups is keyed by person first.
CREATE INDEX person_groups_group ON person_groups (group_type_index, group_key);
