-- Members of a group (the dashboard's account pages): person_groups is keyed by person first, so finding a group's
-- persons scanned every link of every project.
CREATE INDEX person_groups_group ON person_groups (group_type_index, group_key);
