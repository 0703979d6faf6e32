import CatenaCore

/// The enqueue-side view of uploads: what a record appended after everything enqueued so far
/// would meet. It refuses a manifest whose chunks were never appended, a part whose chunks are
/// not all there, a part, completion or abort of an upload that is not open. The index keeps
/// the same facts for what is durable; this view also covers what is still being written.
///
/// `strict` (the head deciding whether to take a write) refuses a part, completion or abort of
/// an unknown upload with `noSuchUpload`. Otherwise (records the head already took, arriving by
/// replication or catch-up) such a record is taken without effect on the upload: its creation
/// may have been compacted away here while the record itself was kept (a copy of a log keeps
/// what its request window holds), and a manifest names every chunk it needs on its own.
struct UploadTracker {
    /// A chunk group no manifest has claimed: its key and chunk sizes.
    struct Group {
        var key: Key
        var sizes: [UInt32: UInt64]
    }

    /// An open multipart upload.
    struct Upload {
        var key: Key
        var created: UInt64
        var parts: [UInt32: ManifestPart]
    }

    var groups: [UploadID: Group] = [:]
    var multipart: [UploadID: Upload] = [:]

    /// The view of what `index` holds (durable records).
    init(from index: StoreIndex) {
        groups = index.uploads.mapValues { Group(key: $0.key, sizes: $0.chunkSizes) }
        multipart = index.multipart.mapValues { Upload(key: $0.key, created: $0.created, parts: $0.parts.mapValues(\.part)) }
    }

    init() {}

    /// An expired upload leaves (compaction collects it).
    mutating func expire(_ id: UploadID) {
        guard let upload = multipart.removeValue(forKey: id) else { return }
        for part in upload.parts.values { groups[part.group] = nil }
    }

    /// Takes `r` if it fits, else throws (and changes nothing).
    mutating func track(_ r: EncodedRecord, timeout: UInt64, strict: Bool) throws(CatenaError) {
        switch r.type {
        case .chunk:
            guard let address = RecordExtension.chunkAddress(in: r.extensions) else { return }
            var group = groups[address.upload] ?? Group(key: r.key, sizes: [:])
            guard group.key == r.key else {
                throw CatenaError(.invalidArgument, "chunk \(address.index) of upload \(address.upload) names key '\(r.key)', but the upload is for '\(group.key)'")
            }
            guard group.sizes[address.index] == nil else {
                throw CatenaError(.invalidArgument, "chunk \(address.index) of upload \(address.upload) was already appended")
            }
            group.sizes[address.index] = UInt64(r.header.valueLength)
            groups[address.upload] = group
        case .manifest:
            let manifest = try Manifest(decoding: r.value)
            var upload: Upload?
            if !manifest.parts.isEmpty {
                upload = try open(manifest.upload, key: r.key, at: r.header.timestamp, timeout: timeout, strict: strict, doing: "complete")
                // Tolerant: the head compared the parts already, and a copied log may hold the
                // creation without the part records (compacted); the groups are checked below
                // either way.
                if let upload, strict {
                    for p in manifest.parts {
                        guard upload.parts[p.number] == p else {
                            let had = upload.parts[p.number].map { "a part of \($0.size) bytes, checksum \($0.checksum.hex16)" } ?? "no such part"
                            throw CatenaError(.invalidPart, "completing upload \(manifest.upload) of '\(r.key)': part \(p.number) (\(p.size) bytes, checksum \(p.checksum.hex16)) is not its current part (it has \(had))")
                        }
                    }
                }
            }
            for (id, count) in manifest.groups { try checkComplete(id, count: count, key: r.key, what: "manifest for '\(r.key)'") }
            let total = manifest.groups.reduce(UInt64(0)) { sum, g in (0..<g.chunkCount).reduce(sum) { $0 + groups[g.id]!.sizes[$1]! } }
            guard total == manifest.totalSize else {
                throw CatenaError(.incompleteUpload, "manifest for '\(r.key)' says \(manifest.totalSize) bytes; its chunks hold \(total)")
            }
            for (id, _) in manifest.groups { groups[id] = nil }
            if let upload {
                // The parts left out of the object go with the upload.
                for part in upload.parts.values { groups[part.group] = nil }
                multipart[manifest.upload] = nil
            }
        case .uploadCreate:
            guard multipart[r.header.requestID] == nil else {
                guard strict else { return }
                throw CatenaError(.invalidArgument, "upload \(r.header.requestID) exists already")
            }
            multipart[r.header.requestID] = Upload(key: r.key, created: r.header.timestamp, parts: [:])
        case .uploadPart:
            let body = try PartRecord(decoding: r.value)
            guard var upload = try open(body.upload, key: r.key, at: r.header.timestamp, timeout: timeout, strict: strict, doing: "add part \(body.part.number) to") else { return }
            let part = body.part
            guard part.checksum == r.header.contentChecksum else {
                throw CatenaError(.malformed, "part \(part.number) of upload \(body.upload): the record's checksum is not the part's")
            }
            if upload.parts.values.contains(where: { $0.group == part.group }) {
                throw CatenaError(.invalidArgument, "part \(part.number) of upload \(body.upload) names chunks another part holds")
            }
            try checkComplete(part.group, count: part.chunkCount, key: r.key, what: "part \(part.number) of '\(r.key)'")
            let size = (0..<part.chunkCount).reduce(UInt64(0)) { $0 + groups[part.group]!.sizes[$1]! }
            guard size == part.size else {
                throw CatenaError(.incompleteUpload, "part \(part.number) of '\(r.key)' says \(part.size) bytes; its chunks hold \(size)")
            }
            if let old = upload.parts[part.number] { groups[old.group] = nil }
            upload.parts[part.number] = part
            multipart[body.upload] = upload
        case .uploadAbort:
            let id = try UploadID(decodingValue: r.value)
            guard let upload = multipart[id], upload.key == r.key else {
                guard strict else { return }
                throw CatenaError(.noSuchUpload, "no upload \(id) of '\(r.key)' is open (never created, completed, aborted, or expired)")
            }
            for part in upload.parts.values { groups[part.group] = nil }
            multipart[id] = nil
        default:
            break
        }
    }

    /// The open upload `id` of `key` that a record with head timestamp `timestamp` may act on;
    /// nil (not strict) if there is none.
    private func open(_ id: UploadID, key: Key, at timestamp: UInt64, timeout: UInt64, strict: Bool, doing what: String) throws(CatenaError) -> Upload? {
        guard let upload = multipart[id], upload.key == key else {
            guard strict else { return nil }
            throw CatenaError(.noSuchUpload, "cannot \(what) upload \(id) of '\(key)': no such upload is open (never created, completed, aborted, or expired)")
        }
        guard timestamp <= upload.created &+ timeout else {
            throw CatenaError(.noSuchUpload, "cannot \(what) upload \(id) of '\(key)': it expired (\(Duration.nanoseconds(Int64(clamping: timeout))) after its creation)")
        }
        return upload
    }

    /// Throws unless the group `id` holds exactly chunks `0..<count` for `key`.
    private func checkComplete(_ id: UploadID, count: UInt32, key: Key, what: String) throws(CatenaError) {
        guard let group = groups[id], group.key == key else {
            throw CatenaError(.incompleteUpload, "\(what) names chunk group \(id), which has no chunks for that key")
        }
        let missing = (0..<count).filter { group.sizes[$0] == nil }
        guard missing.isEmpty else {
            throw CatenaError(.incompleteUpload, "\(what) needs \(count) chunks; \(missing.count) missing (first: \(missing[0]))")
        }
        guard group.sizes.count == Int(count) else {
            throw CatenaError(.incompleteUpload, "\(what) says \(count) chunks; its group has \(group.sizes.count)")
        }
    }
}
