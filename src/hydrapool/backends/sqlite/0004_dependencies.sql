-- Dependencies: a child runs only after every parent succeeded.

ALTER TABLE hydrapool_jobs ADD COLUMN parents_left INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hydrapool_jobs ADD COLUMN cascade INTEGER NOT NULL DEFAULT 1;

CREATE TABLE hydrapool_deps (
    queue  TEXT NOT NULL,
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    PRIMARY KEY (queue, parent, child)
);
