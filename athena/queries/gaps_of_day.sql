-- The feed gaps of one UTC day, in time order: the latest day with a gap (write
-- DATE 'YYYY-MM-DD' in place of the subquery for another). beyond_horizon: too old on
-- arrival to revise any bar.
SELECT symbol, gap_start, gap_end, round(to_unixtime(gap_end) - to_unixtime(gap_start), 3) AS seconds,
       reason, ingest_host, beyond_horizon
FROM gaps
WHERE CAST(gap_start AS date) = (SELECT max(CAST(gap_start AS date)) FROM gaps)
ORDER BY gap_start, symbol
