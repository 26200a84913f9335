-- Dependencies: a child runs only after every parent succeeded.

ALTER TABLE hydrapool_jobs ADD COLUMN parents_left INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hydrapool_jobs ADD COLUMN cascade INTEGER NOT NULL DEFAULT 1;

CREATE TABLE hydrapool_deps (
    queue  TEXT NOT NULL,
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    PRIMARY KEY (queue, parent, child)
);

-- Children still waiting for parents sit apart in the head index, so a claim
-- reads only runnable jobs however many children are blocked.
DROP INDEX hydrapool_jobs_head;
CREATE INDEX hydrapool_jobs_head ON hydrapool_jobs (queue, channel, parents_left, priority DESC, seq)
    WHERE state IN ('waiting', 'queued', 'retrying');
