-- The sample application: users, their containers, files and an audit trail.
-- Covers what a restore must bring back: several tables, indexes, sequences, a view, a function,
-- a foreign key, bytea, non-ASCII text and NULLs.
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    display     text,                      -- NULL for some users
    created_at  timestamptz NOT NULL DEFAULT now(),
    settings    jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS app.containers (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES app.users(id) ON DELETE CASCADE,
    volume      text NOT NULL,
    image       text NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'stopped', 'failed')),
    started_at  timestamptz
);
CREATE INDEX IF NOT EXISTS containers_user_idx ON app.containers(user_id);

CREATE TABLE IF NOT EXISTS app.files (
    id          bigserial PRIMARY KEY,
    container_id bigint NOT NULL REFERENCES app.containers(id),
    path        text NOT NULL,
    content     bytea,
    digest      text GENERATED ALWAYS AS (encode(sha256(coalesce(content, '')), 'hex')) STORED
);
CREATE INDEX IF NOT EXISTS files_path_idx ON app.files(path);

CREATE SEQUENCE IF NOT EXISTS app.invoice_no START 1000 INCREMENT 7;

CREATE TABLE IF NOT EXISTS public.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       bigint,
    action      text NOT NULL,
    detail      text
);

CREATE OR REPLACE VIEW app.active_users AS
    SELECT u.id, u.email, count(c.id) AS running
    FROM app.users u JOIN app.containers c ON c.user_id = u.id AND c.state = 'running'
    GROUP BY u.id, u.email;

CREATE OR REPLACE FUNCTION app.seed(n integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.users (email, display, settings)
    SELECT format('user%s@example.test', g),
           CASE WHEN g % 5 = 0 THEN NULL
                WHEN g % 3 = 0 THEN format('Zoë Ångström-Łukasiewicz №%s 🐘', g)
                ELSE format('Пользователь %s — 用户', g) END,
           jsonb_build_object('theme', CASE WHEN g % 2 = 0 THEN 'dark' ELSE 'light' END,
                              'quota_mb', g * 10)
    FROM generate_series(1, n) g;
    INSERT INTO app.containers (user_id, volume, image, state, started_at)
    SELECT u.id, format('user-%s-data', u.id), 'app:latest',
           (ARRAY['running', 'stopped', 'failed'])[1 + (u.id % 3)],
           CASE WHEN u.id % 4 = 0 THEN NULL ELSE now() - u.id * interval '1 minute' END
    FROM app.users u;
    INSERT INTO app.files (container_id, path, content)
    SELECT c.id, format('/data/notes/%s/%s.txt', c.id, g),
           CASE WHEN g = 3 THEN NULL ELSE convert_to(repeat(md5(c.id::text || g), 4), 'UTF8') || '\x00ff'::bytea END
    FROM app.containers c, generate_series(1, 5) g;
    INSERT INTO public.audit_log (actor, action, detail)
    SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE g END, 'login', format('from 192.0.2.%s «ok»', g % 250)
    FROM generate_series(1, n * 3) g;
    PERFORM nextval('app.invoice_no') FROM generate_series(1, n % 50 + 3);
END $$;
