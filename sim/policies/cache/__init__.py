"""Cache policies, one module per registered name; ``_ordered`` and ``_counted`` are the shared
victim machinery of the list-ordered (LRU, FIFO, LIFO, keep_predicted) and the count-ordered
(LFU, priority) caches."""
