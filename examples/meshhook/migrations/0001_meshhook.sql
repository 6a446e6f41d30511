-- MeshHook's tables, shaped like its migrations, on plain PostgreSQL (no Supabase).
-- Tenant = project. Every tenant table has FORCE ROW LEVEL SECURITY with a
-- fail-closed policy: when app.project_id is unset or empty, no rows.
-- The worker role (mh_worker, created before the migrations) is not the owner and
-- cannot bypass RLS. The job queue has no RLS: workers claim across tenants.

CREATE TABLE projects (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  owner uuid NOT NULL,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_definitions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  slug text NOT NULL,
  version int NOT NULL DEFAULT 1,
  status text NOT NULL DEFAULT 'published',
  definition jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (project_id, slug, version)
);

CREATE TABLE workflow_runs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
  workflow_id uuid NOT NULL REFERENCES workflow_definitions (id) ON DELETE CASCADE,
  status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'paused', 'canceled')),
  step int NOT NULL DEFAULT 1,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON workflow_runs (project_id, started_at DESC);

-- The append-only event log, the source of truth; partitioned on ts as in MeshHook.
CREATE TABLE workflow_events (
  id bigint GENERATED ALWAYS AS IDENTITY,
  project_id uuid NOT NULL,
  run_id uuid NOT NULL REFERENCES workflow_runs (id) ON DELETE CASCADE,
  ts timestamptz NOT NULL DEFAULT clock_timestamp(),
  type text NOT NULL,
  payload jsonb NOT NULL,
  PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE workflow_events_default PARTITION OF workflow_events DEFAULT;
CREATE INDEX ON workflow_events (run_id, ts);

-- pgmq-shaped queue, with the project for routing.
CREATE TABLE job_queue (
  msg_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id uuid NOT NULL,
  read_ct int NOT NULL DEFAULT 0,
  enqueued_at timestamptz NOT NULL DEFAULT now(),
  vt timestamptz NOT NULL DEFAULT clock_timestamp(),
  message jsonb NOT NULL
);
CREATE INDEX ON job_queue (vt);

CREATE FUNCTION app_project_id() RETURNS uuid LANGUAGE sql STABLE
  AS $$ SELECT nullif(current_setting('app.project_id', true), '')::uuid $$;

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['projects', 'workflow_definitions', 'workflow_runs', 'workflow_events'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
  END LOOP;
END $$;
CREATE POLICY tenant_isolation ON projects
  USING (id = app_project_id()) WITH CHECK (id = app_project_id());
CREATE POLICY tenant_isolation ON workflow_definitions
  USING (project_id = app_project_id()) WITH CHECK (project_id = app_project_id());
CREATE POLICY tenant_isolation ON workflow_runs
  USING (project_id = app_project_id()) WITH CHECK (project_id = app_project_id());
CREATE POLICY tenant_isolation ON workflow_events
  USING (project_id = app_project_id()) WITH CHECK (project_id = app_project_id());

GRANT USAGE ON SCHEMA public TO mh_worker;
GRANT SELECT, INSERT, UPDATE ON projects, workflow_definitions, workflow_runs, workflow_events TO mh_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON job_queue TO mh_worker;
GRANT EXECUTE ON FUNCTION app_project_id() TO mh_worker;
