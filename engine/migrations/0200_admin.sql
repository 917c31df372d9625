-- Admin API: dealers, API keys, audit log, service packages, templates, customers (the account-
-- creation flow), drafts, commitments, module history and welcome-letter set-up tokens.
-- A customer with a module owns exactly one row of `accounts` (the engine's view); both are
-- written in one transaction by engine/api/customers.py.

CREATE TABLE dealers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL CHECK (name <> ''),
    parent_id   bigint REFERENCES dealers (id),            -- set: a sub-dealer of that dealer
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dealers_parent ON dealers (parent_id);

-- Keys are shown once; only sha256(token) is kept (engine/api/auth.py says why that suffices).
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,                             -- first characters, to recognise a key
    role        text NOT NULL CHECK (role IN ('admin', 'dealer', 'read-only')),
    dealer_id   bigint REFERENCES dealers (id),
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK (role <> 'dealer' OR dealer_id IS NOT NULL)
);

-- Every change made through the API: who, what, when, before/after.
CREATE TABLE audit_log (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    key_id        bigint,
    role          text NOT NULL,
    actor_dealer  bigint,
    dealer_id     bigint,                                  -- whose resource changed (tenancy filter)
    action        text NOT NULL,
    resource      text NOT NULL,
    resource_id   text NOT NULL,
    before        jsonb,
    after         jsonb
);
CREATE INDEX audit_log_dealer ON audit_log (dealer_id, id DESC);
CREATE INDEX audit_log_resource ON audit_log (resource, resource_id, id DESC);

-- Which dealer registered a monitoring station (stations/receivers: 0100_forwarding.sql).
-- A station without a row here is the provider's; stations marked own are offered to everyone.
CREATE TABLE dealer_stations (
    station    text PRIMARY KEY REFERENCES stations (name) ON DELETE CASCADE,
    dealer_id  bigint NOT NULL REFERENCES dealers (id)
);
CREATE INDEX dealer_stations_dealer ON dealer_stations (dealer_id);

CREATE TABLE service_packages (
    code                 text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name                 text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('base', 'addon')),
    account_types        text[] NOT NULL,
    commercial           boolean NOT NULL DEFAULT false,
    monthly_price_cents  integer NOT NULL CHECK (monthly_price_cents >= 0),
    includes             text[] NOT NULL DEFAULT '{}',     -- two_way_voice, supervision_6h, video, …
    description          text NOT NULL DEFAULT '',
    active               boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE package_templates (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    dealer_id   bigint REFERENCES dealers (id),            -- NULL: offered to every dealer
    base        text NOT NULL REFERENCES service_packages (code),
    addons      text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Installation templates (step 8): default notifications and panel templates.
CREATE TABLE installation_templates (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('notifications', 'panel')),
    name        text NOT NULL,
    dealer_id   bigint REFERENCES dealers (id),            -- NULL: offered to every dealer
    body        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id              bigserial PRIMARY KEY,
    status          text NOT NULL CHECK (status IN ('active', 'commitment')),
    commitment_id   text UNIQUE,
    account_type    text NOT NULL,
    dealer_id       bigint NOT NULL REFERENCES dealers (id),
    sub_dealer_id   bigint REFERENCES dealers (id),
    account         text UNIQUE,                           -- accounts.account (the module's DC-09 #acct)
    module_serial   text,
    login_name      text NOT NULL,
    virtual         boolean NOT NULL DEFAULT false,
    enterprise_group text,
    document        jsonb NOT NULL,                        -- the creation request as validated
    billing_started_at timestamptz,                        -- NULL for a commitment (no charge)
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customers_login ON customers (lower(login_name));
CREATE INDEX customers_dealer ON customers (dealer_id, id);
CREATE INDEX customers_sub_dealer ON customers (sub_dealer_id, id);

-- Every module a customer has had (module swap keeps the history of the old one reachable).
CREATE TABLE customer_modules (
    id           bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    account      text NOT NULL,
    module_serial text NOT NULL,
    module_type  text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    until        timestamptz                                -- NULL: the current module
);
CREATE INDEX customer_modules_customer ON customer_modules (customer_id, id);

CREATE TABLE drafts (
    id          bigserial PRIMARY KEY,
    dealer_id   bigint REFERENCES dealers (id),
    document    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drafts_dealer ON drafts (dealer_id, id);

-- Welcome-letter set-up links: one-time tokens, stored hashed like API keys.
CREATE TABLE setup_tokens (
    token_hash   text PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX setup_tokens_customer ON setup_tokens (customer_id);
