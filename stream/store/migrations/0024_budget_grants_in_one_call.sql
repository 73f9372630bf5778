-- Campaign-budget grants in one call: a worker's whole batch of them (or one) in one round trip.
--
-- 0002's grant took a transaction of five statements per event (BEGIN, the movement's earlier grant,
-- the conditional UPDATE, the movement's row, COMMIT), and the matcher read the budget left before each
-- (stream.granting): seven round trips per event that touches a budget, on the agent's path. With every
-- offer of the example book given a budget (about half the events then touch one), one worker drained
-- 911 and 1,005 events/s (825 and 789 us of CPU an event), against about 2,300-2,800 without budgets.
-- Granted a batch at a time through this function: 2,303 and 1,896 events/s (400 and 412 us).
--
-- grant_budgets(movements, keys, deltas, known) records the grants (movements[i] moves budget keys[i] by
-- deltas[i] in all: consumed +, given back -), in that order, all or none:
--
-- 1. the budgets it moves are locked in the order of their keys (every grant goes through here, so two
--    workers never wait for each other in a cycle);
-- 2. each movement moves its budget by the difference from what the same movement was granted before
--    (a redelivered event re-applies only the difference: a replay never consumes twice);
-- 3. the differences are taken in order, and each budget must cover every step: used plus the sum of the
--    differences so far within [0, budget] at each of them, as granting them one by one would check;
-- 4. if every step is covered, the budgets move by their sums and the movements are recorded; otherwise
--    nothing changes.
--
-- It returns, for every budget in keys or known, what it has used after the call and whether the grants
-- were recorded. A movement may appear once per key (the caller applies a movement's later grant apart).
-- A key with no budget defined raises (a bug: the offers' budget lines miss it).

-- The steps of a call: each grant's difference from the movement's earlier grant, in the call's order.
CREATE FUNCTION budget_steps(movements text[], keys text[], deltas bigint[])
RETURNS TABLE (n bigint, offer_id text, difference bigint)
LANGUAGE sql STABLE AS $$
    SELECT x.n, x.k, x.d - coalesce(m.delta_minor, 0)
    FROM unnest(movements, keys, deltas) WITH ORDINALITY AS x (m, k, d, n)
    LEFT JOIN budget_movements m ON m.event_id = x.m AND m.offer_id = x.k
$$;

CREATE FUNCTION grant_budgets(movements text[], keys text[], deltas bigint[], known text[])
RETURNS TABLE (budget text, used bigint, granted boolean)
LANGUAGE plpgsql AS $$
DECLARE
    missing text;
    covered boolean;
BEGIN
    PERFORM 1 FROM offer_budgets b WHERE b.offer_id = ANY (keys) ORDER BY b.offer_id FOR UPDATE;
    SELECT k INTO missing FROM unnest(keys) AS k WHERE NOT EXISTS (SELECT 1 FROM offer_budgets b WHERE b.offer_id = k) LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'no campaign budget % is defined', missing USING ERRCODE = 'no_data_found';
    END IF;
    SELECT NOT EXISTS (
        SELECT 1
        FROM (
            SELECT s.offer_id, sum(s.difference) OVER (PARTITION BY s.offer_id ORDER BY s.n) AS so_far
            FROM budget_steps(movements, keys, deltas) AS s
        ) AS r
        JOIN offer_budgets b ON b.offer_id = r.offer_id
        WHERE b.used_minor + r.so_far > b.budget_minor OR b.used_minor + r.so_far < 0
    ) INTO covered;
    IF covered THEN
        UPDATE offer_budgets b SET used_minor = b.used_minor + t.total, updated_at = now()
        FROM (SELECT s.offer_id, sum(s.difference) AS total FROM budget_steps(movements, keys, deltas) AS s GROUP BY s.offer_id) AS t
        WHERE b.offer_id = t.offer_id AND t.total <> 0;
        INSERT INTO budget_movements (event_id, offer_id, delta_minor)
        SELECT x.m, x.k, x.d FROM unnest(movements, keys, deltas) AS x (m, k, d)
        ON CONFLICT (event_id, offer_id) DO UPDATE SET delta_minor = EXCLUDED.delta_minor;
    END IF;
    RETURN QUERY SELECT b.offer_id, b.used_minor, covered FROM offer_budgets b WHERE b.offer_id = ANY (keys || known);
END;
$$;
