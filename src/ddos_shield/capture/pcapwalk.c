/* The classic pcap record walk and frame gather, for capture/pcap.py (see capture/native.py).
 *
 * Why C: where each record starts depends on the lengths of all the records before it,
 * a pointer chase that numpy can only approach by scanning every byte of the file for
 * things that look like headers (capture/pcap.py's _PcapWalk).  Here it is a loop of a
 * few nanoseconds a record, and the same pass copies each record's header and frame
 * prefix out (zeros past the captured length), which numpy does in two more passes
 * over the chunk.  The Python reader keeps its numpy walk for when this is not built;
 * both give the same records (tests/capture/test_pcap.py runs every test on both).
 *
 * Built by `ddos-shield build` (capture/native.py) into _pcapwalk.so beside this file.
 */
#include <stdint.h>
#include <string.h>

enum { WALK_OK = 0, WALK_CUT_SHORT = 1, WALK_CORRUPT = 2 };

/* Walk the records starting at `pos` while they start before `end`, at most `max_n` of
 * them.  For each record i: offs[i] = where it starts; heads[16 i ..] = its 16-byte
 * header as stored; frames[snap i ..] = the `snap` bytes after header and `skip` bytes
 * of link pseudo-header, those past the record's own length zeroed.
 *
 * state[0] is set to where the walk stopped (the next record), state[1] to WALK_OK, or
 * WALK_CUT_SHORT (the record at state[0] runs past the end of the file) or WALK_CORRUPT
 * (its length exceeds max_record).  Returns the number of records walked. */
int64_t ds_pcap_walk(const uint8_t *buf, int64_t size, int64_t pos, int64_t end, int32_t swap,
                     int64_t max_record, int64_t skip, int64_t snap, int64_t max_n, int64_t *offs,
                     uint8_t *heads, uint8_t *frames, int64_t *state) {
    int64_t n = 0;
    state[1] = WALK_OK;
    while (pos < end && n < max_n) {
        if (pos + 16 > size) {
            state[1] = WALK_CUT_SHORT;
            break;
        }
        uint32_t incl;
        memcpy(&incl, buf + pos + 8, 4);
        if (swap)
            incl = __builtin_bswap32(incl);
        if ((int64_t)incl > max_record) {
            state[1] = WALK_CORRUPT;
            break;
        }
        if (pos + 16 + (int64_t)incl > size) {
            state[1] = WALK_CUT_SHORT;
            break;
        }
        offs[n] = pos;
        memcpy(heads + 16 * n, buf + pos, 16);
        int64_t keep = (int64_t)incl - skip;
        keep = keep < 0 ? 0 : keep > snap ? snap : keep;
        uint8_t *row = frames + snap * n;
        if (keep > 0) /* else the source may lie past the end of the file */
            memcpy(row, buf + pos + 16 + skip, (size_t)keep);
        memset(row + keep, 0, (size_t)(snap - keep));
        pos += 16 + (int64_t)incl;
        n++;
    }
    state[0] = pos;
    return n;
}
