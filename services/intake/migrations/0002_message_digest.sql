-- A message is known by its place in the topic *and* by its content.
--
-- A broker that lost its log (a restarted memory broker, a topic deleted and created again)
-- hands out offsets from 0 again. Keyed by (topic, partition, offset) alone, every new message
-- at an offset already recorded was taken for a redelivery and skipped: silently lost. Now a
-- row also holds the SHA-256 of the message (value and headers); a message at a known offset
-- with another digest is a new one, recorded beside the old row. Rows from before this
-- migration keep an empty digest and stand for whatever message was at their offset.
ALTER TABLE intake_messages ADD COLUMN digest bytea NOT NULL DEFAULT ''::bytea;
ALTER TABLE intake_messages ALTER COLUMN digest DROP DEFAULT;
ALTER TABLE intake_messages DROP CONSTRAINT intake_messages_pkey;
ALTER TABLE intake_messages ADD PRIMARY KEY (topic, partition, "offset", digest);
