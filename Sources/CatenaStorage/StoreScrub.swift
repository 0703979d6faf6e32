import CatenaCore
import Logging
import NIOPosix

/// The scrub: live keys read back from disk and checked, a page at a time.
extension Store {
    /// One page of a scrub: the live keys starting with `prefix`, in byte order, strictly after
    /// `after` — at most `limit` of them, and no more than about `maxBytes` of object data (a
    /// page holds at least one key, however large its object) — each with the newest version's
    /// LSN, size and content checksum, and whether that version could be read and matched.
    ///
    /// Unlike ``head(_:)`` and ``list(prefix:after:limit:)``, which answer from the index, the
    /// scrub reads every record of every version it reports from its segment file, as ``get(_:)``
    /// does, checking each record checksum and then the content checksum: a byte flipped in a
    /// value of a sealed segment — which start-up does not read (hint files) — is found here.
    /// A version the store would refuse to serve (damaged on disk, a chunk missing, possibly
    /// replaced by unreadable records) is reported with its ``ScrubEntry/problem`` rather than
    /// thrown, and so is a failed read; only a closed store throws.
    ///
    /// The index is walked in steps of ``StoreConfiguration/listStepEntries`` under the lock, as
    /// listings are, and the data read outside it on the reader threads, one record at a time:
    /// a scrub holds up appends no longer than a listing, and takes one reader thread at a time.
    /// Like a listing, a page is not one snapshot: each entry is the newest durable version of
    /// its key when its step ran. The first page (`after` nil) also carries the store's known
    /// damage (``ScrubPage/damage``).
    public func scrub(prefix: [UInt8] = [], after: Key? = nil, limit: Int = 256, maxBytes: UInt64 = 16 << 20) async throws(CatenaError) -> ScrubPage {
        guard limit >= 1 else { throw CatenaError(.invalidArgument, "scrub limit must be at least 1") }
        let stepEntries = configuration.listStepEntries
        var planned: [PlannedScrub] = []
        var plannedBytes: UInt64 = 0
        var cursor = after
        var more = false
        let damage: [String] = after == nil ? self.damage.map(\.description) : []
        walk: while true {
            let remaining = limit - planned.count
            let (picked, step, cut) = state.withLock { (s) -> ([PlannedScrub], StoreIndex.ListStep, Bool) in
                let step = s.index.list(prefix: prefix, after: cursor, limit: remaining, maxEntries: stepEntries)
                let keys: [Key] = switch step {
                case .done(let keys, _), .paused(let keys, _): keys
                }
                var picked: [PlannedScrub] = []
                var bytes = plannedBytes
                for key in keys {
                    let v = s.index.objects[key]!
                    // The byte budget: a page takes at least one key, then stops before the key
                    // that would take it past the budget.
                    if !(planned.isEmpty && picked.isEmpty) && bytes + v.size > maxBytes { return (picked, step, true) }
                    bytes += v.size
                    picked.append(Store.planScrub(key, v, s, pool: readerPool))
                }
                return (picked, step, false)
            }
            planned += picked
            plannedBytes = picked.reduce(plannedBytes) { $0 + $1.entry.size }
            if cut {
                more = true
                break walk
            }
            switch step {
            case .done(_, let hasMore):
                more = hasMore
                break walk
            case .paused(_, let resumeAfter):
                cursor = resumeAfter
            }
        }
        var entries: [ScrubEntry] = []
        entries.reserveCapacity(planned.count)
        var bytesRead: UInt64 = 0
        for p in planned {
            var entry = p.entry
            if entry.problem == nil, let body = p.body {
                do throws(CatenaError) {
                    var pieces = body.makeAsyncIterator()
                    while let piece = try await pieces.nextPiece() { bytesRead += UInt64(piece.count) }
                } catch where error.code == .closed || error.code == .cancelled {
                    throw error
                } catch {
                    entry.problem = "\(error.message) [\(error.code)]"
                    logger.error("scrub: a stored version cannot be read back", metadata: .catena([
                        .key: "\(entry.key)", .lsn: "\(entry.lsn)", .error: "\(error)",
                    ]))
                }
            }
            entries.append(entry)
        }
        return ScrubPage(entries: entries, nextCursor: more ? entries.last?.key : nil, bytesRead: bytesRead, damage: damage)
    }

    /// What the scrub will report of `key` and, if its version may be served, the body to read.
    static func planScrub(_ key: Key, _ v: ObjectVersion, _ s: State, pool: NIOThreadPool) -> PlannedScrub {
        var entry = ScrubEntry(key: key, lsn: v.lsn, size: v.size, contentChecksum: v.contentChecksum)
        do throws(CatenaError) {
            try refuseIfPossiblyStale(key, v, s)
        } catch {
            entry.problem = error.message
            return PlannedScrub(entry: entry, body: nil)
        }
        if v.damaged {
            entry.problem = v.type == .manifest
                ? "chunks of the object are missing from the log or damaged (manifest \(v.lsn), segment \(v.location.segment) offset \(v.location.offset))"
                : "record \(v.lsn) in segment \(v.location.segment) offset \(v.location.offset) fails its checksum (found at start-up)"
            return PlannedScrub(entry: entry, body: nil)
        }
        let locations = v.type == .manifest ? v.chunks : [v.location]
        var parts: [ObjectBody.Part] = []
        for loc in locations {
            guard let seg = s.segments.first(where: { $0.id == loc.segment }) else {
                entry.problem = "segment \(loc.segment), which holds a record of the object, is missing"
                return PlannedScrub(entry: entry, body: nil)
            }
            parts.append(ObjectBody.Part(file: seg.file, location: loc))
        }
        return PlannedScrub(entry: entry, body: ObjectBody(parts: parts, contentChecksum: v.contentChecksum, objectParts: v.parts, size: v.size,
                                                          pool: pool))
    }
}

/// A key the scrub reports, and the body it reads to check it (nil when the version already
/// has a problem).
struct PlannedScrub: Sendable {
    var entry: ScrubEntry
    var body: ObjectBody?
}
