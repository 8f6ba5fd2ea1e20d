"""Traffic control: rate limits and quotas, bulkheads, circuit breakers and retries."""
