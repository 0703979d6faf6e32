import CatenaCore
import CatenaStorage
import CatenaWire

/// Server-side copy: the head reads the source from its own log and writes the copy through
/// its own write path, so the object's bytes never travel to the client.
extension Node {
    /// The chunk size of a copy's records (a copy of an object larger than this, or stored in
    /// chunks, is written in chunks of this size and a manifest).
    static let copyChunkSize = 1 << 20
    /// Chunks of one copy in flight down the chain at once.
    static let copyChunkWindow = 4

    /// Copies the newest version of `request.source` to `request.destination` as the write
    /// `request.requestID`, and returns the copy's LSN.
    ///
    /// Runs at the head, which holds every write the chain took (committed or not): the source
    /// read is its newest durable version there, and a copy of a version that never commits
    /// never commits either (it follows that version in the log). The copy keeps the source's
    /// content checksum, content type and metadata; its body is verified on the way (every
    /// record, and the whole object's checksum before the copy becomes visible). A small object
    /// is one put; a larger one, chunks then a manifest, whose request ids derive from the
    /// copy's and the source version's, so a retried copy of an unchanged source rewrites
    /// nothing, and one of a changed source starts a fresh upload. `request.condition` is the
    /// destination's, decided at the last write.
    func copy(_ request: CopyRequest) async throws(CatenaError) -> LSN {
        let view = replica.view.snapshot
        guard view.role?.takesWrites == true else {
            let head = view.configuration?.head.map { "\($0.id) at \($0.address)" } ?? "no node"
            throw CatenaError(.redirect, "copies go to the head: \(head)")
        }
        guard request.requestID != .none else { throw CatenaError(.invalidArgument, "a copy needs a request id (0 is reserved)") }
        guard let source = try store.get(request.source) else { throw CatenaError(.notFound, "not found: \(request.source)") }
        let info = source.info
        let extensions = RecordExtension.objectFields(contentType: info.contentType, metadata: info.userMetadata)
        if info.chunkCount == 0 && info.size <= UInt64(Self.copyChunkSize) {
            let bytes = try await source.bytes()
            return try await submitted(WriteRequest(requestID: request.requestID, type: .put, key: request.destination, value: bytes,
                                                    contentChecksum: info.contentChecksum, extensions: extensions,
                                                    condition: request.condition))
        }
        // A multipart source is copied as a multipart object with the same part boundaries (its
        // content checksum is defined over them): an upload, each part a chunk group and a
        // part record, then the manifest. Any other, as one chunk group.
        let multipart = !info.parts.isEmpty
        let parts = multipart ? info.parts : [PartSummary(size: info.size, checksum: info.contentChecksum)]
        let upload = Self.derivedID(request.requestID, info.lsn, UInt64.max)
        if multipart {
            _ = try await submitted(WriteRequest(requestID: upload, type: .uploadCreate, key: request.destination, extensions: extensions))
        }
        do throws(CatenaError) {
            return try await copyParts(request, source: source, parts: parts, upload: upload, multipart: multipart, extensions: extensions)
        } catch {
            // A multipart copy that fails for good after its upload was opened aborts it, rather
            // than leave the copied parts to wait out the upload's expiry. Not one that may be
            // retried (cancelled with its connection, a lost node): the retry, with the same
            // ids, finds the upload and the parts already copied.
            if multipart, [.preconditionFailed, .corruption, .checksumMismatch].contains(error.code) {
                _ = try? await submitted(WriteRequest(requestID: Self.derivedID(request.requestID, info.lsn, 1 << 42), type: .uploadAbort,
                                                      key: request.destination, value: upload.encodedValue))
            }
            throw error
        }
    }

    /// The chunks of `parts` (each a chunk group), their part records if `multipart`, then the
    /// manifest: the copy's last write.
    private func copyParts(_ request: CopyRequest, source: StoredObject, parts: [PartSummary], upload: UploadID, multipart: Bool,
                           extensions: [RecordExtension]) async throws(CatenaError) -> LSN {
        let info = source.info
        var manifestParts: [ManifestPart] = []
        var chunkID: UInt64 = 0
        var body = source.body.makeAsyncIterator()
        var carry: ArraySlice<UInt8> = []
        for (p, part) in parts.enumerated() {
            let group = multipart ? Self.derivedID(request.requestID, info.lsn, 1 << 40 | UInt64(p)) : upload
            var index: UInt32 = 0
            var remaining = part.size
            var pending: [UInt8] = []
            pending.reserveCapacity(Self.copyChunkSize)
            try await withThrowingTaskGroupOfCatenaErrors { (tasks: inout ThrowingTaskGroup<Void, any Error>) async throws(CatenaError) in
                var inFlight = 0
                func send(_ value: [UInt8]) async throws(CatenaError) {
                    if inFlight == Self.copyChunkWindow {
                        try await Self.nextResult(&tasks)
                        inFlight -= 1
                    }
                    var chunk = WriteRequest(requestID: Self.derivedID(request.requestID, info.lsn, chunkID), type: .chunk,
                                             key: request.destination, value: value)
                    chunk.extensions = [.chunkAddress(ChunkAddress(upload: group, index: index))]
                    index += 1
                    chunkID += 1
                    inFlight += 1
                    tasks.addTask { _ = try await self.submitted(chunk) }
                }
                while remaining > 0 {
                    if carry.isEmpty {
                        guard let piece = try await body.nextPiece() else {
                            throw CatenaError(.corruption, "'\(request.source)' ended before its \(info.size) bytes")
                        }
                        carry = piece[...]
                        continue
                    }
                    let take = Int(min(UInt64(carry.count), remaining, UInt64(Self.copyChunkSize - pending.count)))
                    pending += carry.prefix(take)
                    carry = carry.dropFirst(take)
                    remaining -= UInt64(take)
                    if pending.count == Self.copyChunkSize {
                        try await send(pending)
                        pending.removeAll(keepingCapacity: true)
                    }
                }
                if !pending.isEmpty || index == 0 { try await send(pending) }
                while inFlight > 0 {
                    try await Self.nextResult(&tasks)
                    inFlight -= 1
                }
            }
            let manifestPart = ManifestPart(number: UInt32(p + 1), group: group, chunkCount: index, size: part.size, checksum: part.checksum)
            manifestParts.append(manifestPart)
            if multipart {
                _ = try await submitted(WriteRequest(requestID: Self.derivedID(request.requestID, info.lsn, 1 << 41 | UInt64(p)), type: .uploadPart,
                                                     key: request.destination, value: PartRecord(upload: upload, part: manifestPart).encoded(),
                                                     contentChecksum: part.checksum))
            }
        }
        // The source's whole body was read (its checksum verified at its end).
        guard try await body.nextPiece() == nil else { throw CatenaError(.corruption, "'\(request.source)' holds more than its \(info.size) bytes") }
        let manifest = multipart ? Manifest(upload: upload, parts: manifestParts)
            : Manifest(upload: upload, chunkCount: manifestParts[0].chunkCount, totalSize: info.size)
        return try await submitted(WriteRequest(requestID: request.requestID, type: .manifest, key: request.destination,
                                                value: manifest.encoded(), contentChecksum: info.contentChecksum,
                                                extensions: extensions, condition: request.condition))
    }

    /// A write through the replica, awaited.
    private func submitted(_ request: WriteRequest) async throws(CatenaError) -> LSN {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<LSN, CatenaError>, Never>) in
            replica.submit(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// A request id for part `n` of the copy `id` of the source version `lsn`.
    static func derivedID(_ id: RequestID, _ lsn: LSN, _ n: UInt64) -> RequestID {
        var w = ByteWriter(capacity: 41)
        w.u64(id.high); w.u64(id.low); w.u64(lsn.epoch); w.u64(lsn.seq); w.u64(n)
        let high = XXH3.hash(w.bytes + [0]), low = XXH3.hash(w.bytes + [1])
        return RequestID(high: high, low: low == 0 && high == 0 ? 1 : low)
    }

    private static func nextResult(_ group: inout ThrowingTaskGroup<Void, any Error>) async throws(CatenaError) {
        do {
            _ = try await group.next()
        } catch {
            throw (error as? CatenaError) ?? CatenaError(.ioFailure, "copy failed: \(error)")
        }
    }
}

/// A throwing task group whose errors are ``CatenaError``s; the group's tasks are cancelled
/// when the body throws.
private func withThrowingTaskGroupOfCatenaErrors(
    _ body: (inout ThrowingTaskGroup<Void, any Error>) async throws(CatenaError) -> Void
) async throws(CatenaError) {
    let result: Result<Void, CatenaError> = await withThrowingTaskGroup(of: Void.self) { group in
        do throws(CatenaError) {
            try await body(&group)
            return .success(())
        } catch {
            group.cancelAll()
            return .failure(error)
        }
    }
    try result.get()
}
