-- The first migration: a table with a default, a check and a unique index.
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (email LIKE '%@%')
);
