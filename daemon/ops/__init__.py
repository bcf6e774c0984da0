"""Operations: metrics, status and readiness, housekeeping, the process supervisor, logging."""
