-- Quarantined records per reason, their share of all records, and when the reason was
-- first and last seen (Kafka time).
SELECT reason, count(*) AS records,
       round(100.0 * count(*) / ((SELECT count(*) FROM trades) + (SELECT count(*) FROM quarantine)), 4) AS pct,
       min(kafka_ts) AS first_seen, max(kafka_ts) AS last_seen
FROM quarantine
GROUP BY reason
ORDER BY records DESC, reason
