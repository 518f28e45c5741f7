-- The second migration: a dependent table, a function and seed data.
CREATE TABLE posts (
    id bigserial PRIMARY KEY,
    author bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title text NOT NULL
);
CREATE FUNCTION post_count(who bigint) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM posts WHERE author = who $$;
INSERT INTO users (email) VALUES ('first@example.com');
