"""Traffic control: rate limits and quotas (policies, counters, the `limit` stage)."""
