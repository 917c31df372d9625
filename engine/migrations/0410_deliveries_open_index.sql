-- An account's open deliveries (pending or dead) are what is looked up by account (the account
-- status counts them); delivered rows are history, reached through their signal. A partial index
-- on the open ones only: a delivery leaves it when it is delivered, so recording that outcome no
-- longer adds an entry to a by-account index for every delivered row.
DROP INDEX deliveries_account;
CREATE INDEX deliveries_account_open ON deliveries (account) WHERE state <> 'delivered';
