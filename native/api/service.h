/* The parent's VMBus service's look at its own SynIC pages, one crossing per pass (service.c). */

/* Take the event flags of every SINT in `sints` (bit n: SINT n, ascending) on the pages at
 * `flags_gpa` (SIEFP): each SINT's 256 bytes read and, if any flag was set, cleared at once.
 * The flags taken go to out[] as sint * 2048 + flag, in order (at most `cap`); *slot_type gets
 * the MessageType of the SIM slot at `slot_gpa` (0: empty), not taken. Returns how many flags
 * were set (more than `cap`: the rest were cleared and lost), or -1 if the pages are not the
 * partition's (nothing taken). */
int32_t hv_service_take(struct hv_host *h, uint64_t partition_id, uint64_t slot_gpa, uint64_t flags_gpa,
                        uint32_t sints, uint16_t *out, uint32_t cap, uint32_t *slot_type);
