-- A request over HTTP reserves its idempotency key (its payload's fingerprint, an empty
-- receipt) before it opens anything, and fills the receipt in once the visit is appended.
-- Before, two requests sent at once with one key and different services both found the key
-- unused, both opened their cases, and the second was then answered 409 with its cases left
-- open. A refused request (nothing opened) gives its reservation back.
GRANT UPDATE, DELETE ON intake_requests TO yizhan_app;
