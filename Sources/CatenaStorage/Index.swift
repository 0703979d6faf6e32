import CatenaCore
import DequeModule

/// One version of one key, as the index knows it: the newest, or an older one kept for CRAQ
/// reads (``StoreIndex/older``).
struct ObjectVersion: Sendable {
    var lsn: LSN
    var type: RecordType
    var location: Location
    /// The object's size: the value length of a put, the total size of a manifest.
    var size: UInt64
    var contentChecksum: UInt64
    var timestamp: UInt64
    var requestID: RequestID
    var extensions: [UInt8]
    /// For a manifest: the chunk groups (where each starts in `chunks`) and the chunks'
    /// locations, in order.
    var groups: [UploadID: Int] = [:]
    var chunks: [Location]
    /// For a multipart manifest: its parts' sizes and checksums.
    var parts: [PartSummary] = []
    /// The record on disk failed its checksum: refuse to serve it.
    var damaged: Bool
}

/// A version kept in ``StoreIndex/older``: its key, and the seq of the version that superseded it.
struct Supersession: Sendable {
    var seq: UInt64
    var key: Key
}

/// Chunks of an upload whose manifest has not been appended yet.
struct PendingUpload: Sendable {
    var key: Key
    var chunks: [UInt32: Location]
    var chunkSizes: [UInt32: UInt64]
    var lastTimestamp: UInt64
}

/// An open multipart upload, as the index knows it.
struct OpenUpload: Sendable {
    var key: Key
    var lsn: LSN
    var created: UInt64
    var location: Location
    /// The creation record's extensions: the object's content type and metadata.
    var extensions: [UInt8]
    var parts: [UInt32: OpenUploadPart]
}

/// A part of an open multipart upload: its chunk group (still among the pending groups) and
/// the record that made it.
struct OpenUploadPart: Sendable {
    var part: ManifestPart
    var lsn: LSN
    var timestamp: UInt64
    var location: Location
}

/// The in-memory index: key -> newest version, the older versions a CRAQ read may still ask
/// for, pending uploads, and a lazily sorted key list for listing by prefix.
///
/// Keys are hashed and sorted byte-wise (``Key`` is a byte string). The sorted list is kept as
/// an array plus a batch of keys added since; a listing walks both, merging the batch in only
/// when it has grown large (amortized O(1) per key), and skips deleted keys by checking the
/// dictionary.
struct StoreIndex: Sendable {
    var objects: [Key: ObjectVersion] = [:]
    /// Versions at or below this seq are known to be committed (the higher of the node's
    /// ``Store/noteCommitted(through:)`` and the persisted commit watermark): a version that one
    /// of them superseded is never asked for again. `.max` (the default): everything is, so no
    /// older version is kept (the data-directory verifier's index).
    var commitHint: UInt64 = .max
    /// Per key, oldest first, the versions older than its newest that a CRAQ read may still be
    /// sent to: the newest one at or below the commit hint, and every one after it. Only keys
    /// overwritten above the hint have an entry. See ``trimOlderVersions()``.
    var older: [Key: Deque<ObjectVersion>] = [:]
    /// For each version kept in `older`, in log order: the seq of the version that superseded it,
    /// and its key. Once the hint reaches that seq, the key's versions below it can go.
    private var supersessions = Deque<Supersession>()
    /// Chunk groups no manifest has claimed yet (a streamed put's, or a multipart upload's part's).
    var uploads: [UploadID: PendingUpload] = [:]
    /// Open multipart uploads by id.
    var multipart: [UploadID: OpenUpload] = [:]
    /// Per segment id, the bytes of its records that are garbage sooner or later: versions a
    /// newer version of their key superseded (a superseded manifest's chunks included) and
    /// tombstones (which go once every older version of their key has). Maintained as records
    /// are applied, so start-up and truncation, which rebuild the index, rebuild it too; a
    /// compaction recomputes it for the segment it writes. Whether compaction may drop those
    /// bytes *now* (the watermark and the request-id window) is ``Store/garbage``'s business.
    /// Not counted: chunks of abandoned uploads (only compaction notices them).
    private(set) var garbageBytes: [UInt64: UInt64] = [:]
    private var sortedKeys: [Key] = []
    private var unsortedKeys: [Key] = []
    /// Whether `unsortedKeys` is currently sorted.
    private var recentSorted = true

    /// Applies one record (in log order).
    mutating func apply(_ e: EntrySummary) {
        switch e.header.type {
        case .chunk:
            guard let address = e.chunkAddress else { return }
            var upload = uploads[address.upload] ?? PendingUpload(key: e.key, chunks: [:], chunkSizes: [:], lastTimestamp: 0)
            upload.chunks[address.index] = e.location
            upload.chunkSizes[address.index] = UInt64(e.header.valueLength)
            upload.lastTimestamp = max(upload.lastTimestamp, e.header.timestamp)
            uploads[address.upload] = upload
        case .manifest:
            var version = makeVersion(e)
            if let body = e.manifest {
                version.size = body.totalSize
                var complete = true
                for (group, count) in body.groups {
                    version.groups[group] = version.chunks.count
                    let pending = uploads.removeValue(forKey: group)
                    let chunks = (0..<count).compactMap { pending?.chunks[$0] }
                    // Chunks missing (e.g. lost to damage): the object cannot be served.
                    if pending == nil || chunks.count != Int(count) { complete = false }
                    version.chunks += chunks
                }
                if !complete { version.damaged = true }
                if !body.parts.isEmpty {
                    version.parts = body.parts.map(\.summary)
                    if let upload = multipart.removeValue(forKey: body.upload) {
                        // The parts left out of the object go.
                        let listed = Set(body.parts.map(\.group))
                        close(upload, keeping: listed)
                    }
                }
            }
            put(e.key, version)
        case .fence:
            // No version of its key: only the request id matters (the replica machine's).
            addGarbage(e.location)
        case .uploadCreate:
            let id = e.header.requestID
            if multipart[id] == nil {
                multipart[id] = OpenUpload(key: e.key, lsn: e.lsn, created: e.header.timestamp, location: e.location,
                                           extensions: e.extensions, parts: [:])
            } else {
                addGarbage(e.location)
            }
        case .uploadPart:
            guard let body = e.part, var upload = multipart[body.upload] else {
                // Of an upload already gone (its creation compacted away): nothing to track.
                addGarbage(e.location)
                return
            }
            if let old = upload.parts[body.part.number] { discard(old) }
            upload.parts[body.part.number] = OpenUploadPart(part: body.part, lsn: e.lsn, timestamp: e.header.timestamp, location: e.location)
            multipart[body.upload] = upload
        case .uploadAbort:
            if let id = e.abortedUpload, let upload = multipart.removeValue(forKey: id) { close(upload, keeping: []) }
            addGarbage(e.location)
        default:
            put(e.key, makeVersion(e))
        }
    }

    /// An upload that ended (completed, aborted, expired): its records are garbage, and so are
    /// the chunks of its parts other than `kept` (the ones a manifest took).
    mutating func close(_ upload: OpenUpload, keeping kept: Set<UploadID>) {
        addGarbage(upload.location)
        for part in upload.parts.values {
            if kept.contains(part.part.group) {
                addGarbage(part.location)
            } else {
                discard(part)
            }
        }
    }

    /// A part replaced or left out: its record and its chunks are garbage.
    private mutating func discard(_ part: OpenUploadPart) {
        addGarbage(part.location)
        if let group = uploads.removeValue(forKey: part.part.group) {
            for location in group.chunks.values { addGarbage(location) }
        }
    }

    /// Removes the open uploads created before `cutoff` (head timestamps), as if aborted, and
    /// returns their ids.
    mutating func expireUploads(createdBefore cutoff: UInt64) -> [UploadID] {
        let expired = multipart.filter { $0.value.created < cutoff }
        for (id, upload) in expired {
            multipart[id] = nil
            close(upload, keeping: [])
        }
        return Array(expired.keys)
    }

    /// Records a damaged record whose header was intact: if it is the newest version of its
    /// key, reads of that key are refused rather than served from an older version.
    mutating func applyDamaged(_ e: EntrySummary) {
        guard e.header.type.isVersion else { return }
        var version = makeVersion(e)
        version.damaged = true
        put(e.key, version)
    }

    private mutating func put(_ key: Key, _ version: ObjectVersion) {
        if let old = objects.updateValue(version, forKey: key) {
            // A tombstone was counted when it was applied. A version kept in `older` counts as
            // garbage all the same: what compaction may drop is the watermark's business.
            if old.type != .delete {
                addGarbage(old.location)
                for chunk in old.chunks { addGarbage(chunk) }
            }
            keep(old, supersededBy: version, of: key)
        } else {
            unsortedKeys.append(key)
            recentSorted = false
        }
        if version.type == .delete { addGarbage(version.location) }
    }

    /// Keeps `old`, which `new` just superseded, while a CRAQ read may be sent to it: unless
    /// `new` is committed (at or below the hint), in which case no read goes to `old` or anything
    /// older.
    private mutating func keep(_ old: ObjectVersion, supersededBy new: ObjectVersion, of key: Key) {
        guard new.lsn.seq > commitHint else {
            older[key] = nil
            return
        }
        older[key, default: []].append(old)
        supersessions.append(Supersession(seq: new.lsn.seq, key: key))
    }

    /// Forgets the older versions the commit hint has passed: for each supersession at or below
    /// it, its key's versions older than the superseding one (that one is committed, so no read
    /// is sent to anything older). Each kept version is pushed and popped once, so this costs
    /// amortized O(1) per overwrite; what stays is bounded by the overwrites above the hint.
    mutating func trimOlderVersions() {
        while let first = supersessions.first, first.seq <= commitHint {
            supersessions.removeFirst()
            guard let versions = older[first.key] else { continue }
            let stale = versions.prefix { $0.lsn.seq < first.seq }.count
            if stale == versions.count {
                older[first.key] = nil
            } else if stale > 0 {
                older[first.key]?.removeFirst(stale)
            }
        }
    }

    /// The version of `key` whose LSN is exactly `lsn`, if the index holds it (the newest or a
    /// kept older one).
    func version(of key: Key, at lsn: LSN) -> ObjectVersion? {
        if let newest = objects[key], newest.lsn == lsn { return newest }
        guard let versions = older[key] else { return nil }
        // Oldest first, so in LSN order: binary search.
        var low = versions.startIndex, high = versions.endIndex
        while low < high {
            let mid = (low + high) / 2
            if versions[mid].lsn < lsn { low = mid + 1 } else { high = mid }
        }
        guard low < versions.endIndex, versions[low].lsn == lsn else { return nil }
        return versions[low]
    }

    /// How many older versions the index holds, over all keys.
    var olderVersionCount: Int { older.values.reduce(0) { $0 + $1.count } }

    /// Forgets the older versions that need a record compaction dropped: the record itself, or
    /// (a manifest) one of its chunks. Compaction drops only versions superseded at or below the
    /// watermark, which the trim to the hint (never below the watermark) has forgotten already;
    /// this makes sure no kept version points into a removed segment whatever happens.
    mutating func forgetOlderVersions(needing dropped: [EntrySummary]) {
        for e in dropped {
            guard let versions = older[e.key] else { continue }
            let kept = versions.filter { v in
                e.header.type == .chunk ? !v.chunks.contains(e.location) : v.location != e.location
            }
            if kept.count != versions.count { older[e.key] = kept.isEmpty ? nil : Deque(kept) }
        }
    }

    private mutating func addGarbage(_ location: Location) {
        garbageBytes[location.segment, default: 0] += UInt64(location.length)
    }

    /// Forgets the garbage of segments that no longer exist and counts that of a compaction's
    /// output, from its records as the index now sees them (`entries` are all in one segment).
    mutating func recountGarbage(replacing removed: [UInt64], with entries: [EntrySummary]) {
        for id in removed { garbageBytes[id] = nil }
        guard let segment = entries.first?.location.segment else { return }
        var bytes: UInt64 = 0
        for e in entries where isGarbage(e) { bytes += UInt64(e.location.length) }
        garbageBytes[segment] = bytes
    }

    /// Whether the record `e` describes is no longer what the index serves or waits for.
    private func isGarbage(_ e: EntrySummary) -> Bool {
        switch e.header.type {
        case .delete, .fence, .uploadAbort:
            return true
        case .chunk:
            guard let address = e.chunkAddress else { return false }
            if let v = objects[e.key], v.groups[address.upload] != nil, v.chunks.contains(e.location) { return false }
            return uploads[address.upload]?.chunks[address.index] != e.location
        case .uploadCreate:
            return multipart[e.header.requestID]?.location != e.location
        case .uploadPart:
            guard let body = e.part else { return true }
            return multipart[body.upload]?.parts[body.part.number]?.location != e.location
        default:
            return objects[e.key]?.location != e.location
        }
    }

    /// Removes a key entirely (a dropped tombstone), its older versions too.
    mutating func remove(_ key: Key) {
        objects.removeValue(forKey: key)
        older[key] = nil
    }

    private func makeVersion(_ e: EntrySummary) -> ObjectVersion {
        ObjectVersion(
            lsn: e.header.lsn, type: e.header.type, location: e.location,
            size: UInt64(e.header.valueLength), contentChecksum: e.header.contentChecksum,
            timestamp: e.header.timestamp, requestID: e.header.requestID, extensions: e.extensions,
            chunks: [], damaged: e.damaged)
    }


    /// Where one bounded walk of the index for a listing ended.
    enum ListStep: Equatable {
        /// The walk reached the end of the listing: `more` says whether a live key follows the
        /// last one returned (there were more than `limit`).
        case done(keys: [Key], more: Bool)
        /// The walk took its `maxEntries` entries: the listing goes on strictly after `resumeAfter`
        /// (the last key walked, live or not).
        case paused(keys: [Key], resumeAfter: Key)
    }

    /// Live keys (not tombstones) with `prefix`, in byte order, strictly after `after`: at most
    /// `limit` (0: only find out whether there is one), walking at most `maxEntries` index
    /// entries (keys of both arrays, live or not).
    ///
    /// Walks the sorted array and the (sorted on demand) batch of recently added keys side by
    /// side. The batch is merged into the array only when it has grown past an eighth of it, so
    /// listing while keys are being added costs O(log n + batch + page) and merging stays
    /// amortized O(1) per added key.
    mutating func list(prefix: [UInt8], after: Key?, limit: Int, maxEntries: Int = .max) -> ListStep {
        list(prefix: prefix, afterBytes: after?.bytes, limit: limit, maxEntries: maxEntries)
    }

    /// ``list(prefix:after:limit:maxEntries:)`` after any byte string (not only a key): keys
    /// sort byte-wise, so after `P + [0xFF]` — never a key's byte in UTF-8 — is past every key
    /// that starts with `P`.
    mutating func list(prefix: [UInt8], afterBytes after: [UInt8]?, limit: Int, maxEntries: Int = .max) -> ListStep {
        if unsortedKeys.count > max(4096, sortedKeys.count / 8) {
            mergeRecentKeys()
        } else if !recentSorted {
            unsortedKeys.sort()
            recentSorted = true
        }
        var i = StoreIndex.lowerBound(sortedKeys, prefix: prefix, after: after)
        var j = StoreIndex.lowerBound(unsortedKeys, prefix: prefix, after: after)
        var result: [Key] = []
        var last: Key?
        var walked = 0
        while i < sortedKeys.count || j < unsortedKeys.count {
            if walked == max(1, maxEntries), let last {
                return .paused(keys: result, resumeAfter: last)
            }
            walked += 1
            let key: Key
            let fromSorted = j == unsortedKeys.count || (i < sortedKeys.count && sortedKeys[i] < unsortedKeys[j])
            if fromSorted {
                key = sortedKeys[i]; i += 1
            } else {
                key = unsortedKeys[j]; j += 1
            }
            guard key.hasPrefix(prefix) else {
                // Both sides start at the prefix and are sorted: a key past the prefix ends its side.
                if fromSorted { i = sortedKeys.count } else { j = unsortedKeys.count }
                continue
            }
            // A key removed and added again can sit in both arrays.
            if key == last { continue }
            last = key
            if let v = objects[key], v.type != .delete {
                if result.count == limit { return .done(keys: result, more: true) }
                result.append(key)
            }
        }
        return .done(keys: result, more: false)
    }

    /// Merges the recently added keys into the sorted array, dropping keys that left the index.
    private mutating func mergeRecentKeys() {
        unsortedKeys.sort()
        var merged: [Key] = []
        merged.reserveCapacity(sortedKeys.count + unsortedKeys.count)
        var i = 0, j = 0
        while i < sortedKeys.count || j < unsortedKeys.count {
            let next: Key
            if j == unsortedKeys.count || (i < sortedKeys.count && sortedKeys[i] < unsortedKeys[j]) {
                next = sortedKeys[i]; i += 1
            } else {
                next = unsortedKeys[j]; j += 1
            }
            if objects[next] != nil && merged.last != next { merged.append(next) }
        }
        sortedKeys = merged
        unsortedKeys = []
        recentSorted = true
    }

    /// The first index of sorted `keys` whose key is >= `prefix` and > `after`.
    private static func lowerBound(_ keys: [Key], prefix: [UInt8], after: [UInt8]?) -> Int {
        var low = 0, high = keys.count
        while low < high {
            let mid = (low + high) / 2
            let beforePrefix = keys[mid].bytes.lexicographicallyPrecedes(prefix)
            let notAfter = after.map { !$0.lexicographicallyPrecedes(keys[mid].bytes) } ?? false
            if beforePrefix || notAfter { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
