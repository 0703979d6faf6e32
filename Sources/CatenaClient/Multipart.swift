import CatenaCore
import CatenaWire
import NIOCore
import Synchronization

/// A multipart upload being made (``CatenaClient/createMultipartUpload(_:contentType:metadata:)``):
/// the key its object will have and the upload's id. Any client may add parts to it, list,
/// complete or abort it, by these two.
public struct MultipartUpload: Hashable, Sendable, CustomStringConvertible {
    /// The key the object will have.
    public var key: String
    /// The upload's id.
    public var id: UploadID

    /// Names an existing upload.
    public init(key: String, id: UploadID) {
        self.key = key
        self.id = id
    }

    public var description: String { "upload \(id) of '\(key)'" }
}

/// A part as stored: what completing an upload names it by (as S3's part number and ETag).
public struct UploadedPart: Hashable, Sendable {
    /// The part's number (1 ... 10,000).
    public var number: Int
    /// Its size in bytes.
    public var size: UInt64
    /// XXH3-64 of its bytes.
    public var checksum: UInt64

    /// Names a part.
    public init(number: Int, size: UInt64, checksum: UInt64) {
        self.number = number
        self.size = size
        self.checksum = checksum
    }
}

// MARK: - Multipart uploads

extension CatenaClient {
    /// Opens a multipart upload of `key`, as S3's CreateMultipartUpload: parts are then added —
    /// in any order, in parallel, by any client (``uploadPart(_:number:_:)`` and its streaming
    /// forms) — and ``completeMultipartUpload(_:parts:condition:)`` makes the object visible at
    /// once, made of the parts it names; ``abortMultipartUpload(_:)`` drops everything. The
    /// object gets `contentType` and `metadata`. An upload not completed or aborted expires 7
    /// days after its creation (the nodes' `abandonedUploadTimeout`); its parts are then collected.
    public func createMultipartUpload(_ key: String, contentType: String? = nil,
                                      metadata: [String: String] = [:]) async throws(CatenaError) -> MultipartUpload {
        let k = try Key(key)
        let id = newRequestID()
        _ = try await write(WriteRequest(requestID: id, type: .uploadCreate, key: k,
                                         extensions: RecordExtension.objectFields(contentType: contentType, metadata: metadata)))
        return MultipartUpload(key: key, id: id)
    }

    /// Stores `value` as part `number` (1 ... 10,000) of `upload`, replacing an earlier part
    /// with that number. Returns the part as completion names it. Throws `noSuchUpload` if the
    /// upload is not open.
    @discardableResult
    public func uploadPart(_ upload: MultipartUpload, number: Int, _ value: [UInt8]) async throws(CatenaError) -> UploadedPart {
        try await storePart(upload, number: number, pieces: Pieces(value), total: UInt64(value.count), progress: nil)
    }

    /// Stores the bytes `body` yields as part `number` of `upload`, streaming: cut into chunks of
    /// ``Configuration/chunkSize``, a few in flight, so the client holds a few chunks, never
    /// the part. The part exists once its last chunk and its part record are stored.
    @discardableResult
    public func uploadPart<Body: AsyncSequence & Sendable>(_ upload: MultipartUpload, number: Int, streaming body: Body,
                                                           progress: TransferProgress? = nil) async throws(CatenaError) -> UploadedPart
    where Body.Element == [UInt8] {
        try await storePart(upload, number: number, pieces: body, total: nil, progress: progress)
    }

    /// Stores bytes `range` of the file at `path` (its end clamped to the file's) as part
    /// `number` of `upload`, streaming. Several parts of one file may be stored at once. A pipe
    /// or a device is read from where it is, to its end or the range's length.
    @discardableResult
    public func uploadPart(_ upload: MultipartUpload, number: Int, contentsOf path: String, range: Range<UInt64>,
                           progress: TransferProgress? = nil) async throws(CatenaError) -> UploadedPart {
        let file = try LocalFile(reading: path)
        guard file.isRegular else {
            let pieces = file.pieces(of: configuration.chunkSize).prefix(bytes: range.upperBound - range.lowerBound)
            return try await storePart(upload, number: number, pieces: pieces, total: nil, progress: progress)
        }
        let clamped = min(range.lowerBound, file.size)..<min(range.upperBound, file.size)
        return try await storePart(upload, number: number, pieces: FileRangePieces(file: file, range: clamped, pieceSize: configuration.chunkSize),
                                   total: clamped.upperBound - clamped.lowerBound, progress: progress)
    }

    private func storePart<Body: AsyncSequence>(_ upload: MultipartUpload, number: Int, pieces: Body, total: UInt64?,
                                                progress: TransferProgress?) async throws(CatenaError) -> UploadedPart
    where Body.Element == [UInt8] {
        guard (1...Manifest.maxParts).contains(number) else {
            throw CatenaError(.invalidArgument, "part number \(number) is outside 1...\(Manifest.maxParts)")
        }
        let k = try Key(upload.key)
        let group = newRequestID()
        let stored = try await storeChunks(k, group: group, pieces: pieces, total: total, progress: progress)
        let part = ManifestPart(number: UInt32(number), group: group, chunkCount: stored.chunkCount, size: stored.size, checksum: stored.checksum)
        _ = try await write(WriteRequest(requestID: newRequestID(), type: .uploadPart, key: k,
                                         value: PartRecord(upload: upload.id, part: part).encoded(), contentChecksum: stored.checksum))
        return UploadedPart(number: number, size: stored.size, checksum: stored.checksum)
    }

    /// One page of `upload`'s parts in order of part number, after part `after` (the previous
    /// page's `PartPage.nextPartNumber`; 0 for the first page), with the upload's own
    /// description. Throws `noSuchUpload` if the upload is not open.
    public func listParts(_ upload: MultipartUpload, after: Int = 0, limit: Int = 1000) async throws(CatenaError) -> PartPage {
        let request = ListPartsRequest(upload: upload.id, after: UInt32(clamping: max(0, after)), limit: limit)
        return try await askTail(.listParts, request.encoded()) { (reply, _) throws(CatenaError) in try PartPagePayload.decode(reply.payload) }
    }

    /// Every part of `upload`, page by page, in order of part number, with the upload's own
    /// description (as the last page gave it). Throws `noSuchUpload` if the upload is not open.
    public func allParts(_ upload: MultipartUpload) async throws(CatenaError) -> PartPage {
        var page = try await listParts(upload)
        var parts = page.parts
        while let after = page.nextPartNumber {
            page = try await listParts(upload, after: Int(after))
            parts += page.parts
        }
        return PartPage(upload: page.upload, parts: parts, nextPartNumber: nil)
    }

    /// One page of the open multipart uploads of keys starting with `prefix`, in order of key
    /// then upload id, after `after` (the previous page's `UploadPage.nextCursor`).
    public func listMultipartUploads(prefix: String = "", after: UploadCursor? = nil, limit: Int = 1000) async throws(CatenaError) -> UploadPage {
        let request = ListUploadsRequest(prefix: Array(prefix.utf8), after: after, limit: limit)
        return try await askTail(.listUploads, request.encoded()) { (reply, _) throws(CatenaError) in try UploadPagePayload.decode(reply.payload) }
    }

    /// Makes `upload`'s object visible under its key, at once, made of `parts` in the order
    /// given (ascending part numbers; parts uploaded but not named are dropped), as S3's
    /// CompleteMultipartUpload. Each part is named by its number and checksum, as
    /// ``uploadPart(_:number:_:)`` returned it: a part uploaded again since, or never, fails the
    /// call with `invalidPart`, and nothing changes. The object's content checksum is defined
    /// over its parts (`Manifest.checksum(ofParts:)`); reads verify each part and then it. A
    /// `condition` is the key's, checked when the object would become visible (see `put`).
    @discardableResult
    public func completeMultipartUpload(_ upload: MultipartUpload, parts: [UploadedPart],
                                        condition: WriteCondition? = nil) async throws(CatenaError) -> WriteReceipt {
        let k = try Key(upload.key)
        guard !parts.isEmpty else { throw CatenaError(.invalidPart, "completing \(upload) needs at least one part") }
        guard parts.count <= Manifest.maxParts else { throw CatenaError(.invalidPart, "an object has at most \(Manifest.maxParts) parts") }
        for (a, b) in zip(parts, parts.dropFirst()) where a.number >= b.number {
            throw CatenaError(.invalidPart, "parts must be named in ascending order of number (\(a.number), then \(b.number))")
        }
        if let condition { try WriteCondition.check(condition, on: .manifest, key: k) }
        // What the chain committed: each part's chunk group, and the upload's object fields.
        let listed = try await allParts(upload)
        let description = listed.upload
        let stored = Dictionary(listed.parts.map { ($0.number, $0) }, uniquingKeysWith: { _, last in last })
        guard description.key == k else { throw CatenaError(.noSuchUpload, "\(upload): the upload is of '\(description.key)'") }
        var manifestParts: [ManifestPart] = []
        for part in parts {
            guard let found = stored[UInt32(clamping: part.number)] else {
                throw CatenaError(.invalidPart, "\(upload) has no part \(part.number)")
            }
            guard found.checksum == part.checksum, found.size == part.size else {
                throw CatenaError(.invalidPart, "part \(part.number) of \(upload) is \(found.size) bytes with checksum \(found.checksum.hex16), not the \(part.size) bytes with checksum \(part.checksum.hex16) named (uploaded again since?)")
            }
            manifestParts.append(found.manifestPart)
        }
        let manifest = Manifest(upload: upload.id, parts: manifestParts)
        let checksum = Manifest.checksum(ofParts: manifestParts.map(\.summary))
        let request = WriteRequest(requestID: newRequestID(), type: .manifest, key: k, value: manifest.encoded(), contentChecksum: checksum,
                                   extensions: RecordExtension.objectFields(contentType: description.contentType, metadata: description.userMetadata),
                                   condition: condition)
        let lsn = try await write(request)
        return WriteReceipt(key: k, lsn: lsn, size: manifest.totalSize, contentChecksum: checksum)
    }

    /// Ends `upload` without an object, as S3's AbortMultipartUpload: its parts are dropped (and
    /// collected by compaction). Throws `noSuchUpload` if it is not open.
    @discardableResult
    public func abortMultipartUpload(_ upload: MultipartUpload) async throws(CatenaError) -> LSN {
        try await write(WriteRequest(requestID: newRequestID(), type: .uploadAbort, key: try Key(upload.key), value: upload.id.encodedValue))
    }

    /// Stores the file at `path` under `key` as a multipart upload: parts of `partSize` bytes,
    /// `parallelism` of them uploading at once, each streamed in chunks; the object becomes
    /// visible when every part is stored. On failure the upload is aborted. `progress` is
    /// called with the bytes stored so far and the file's size.
    @discardableResult
    public func putMultipart(_ key: String, contentsOf path: String, partSize: Int = 64 << 20, parallelism: Int = 4,
                             contentType: String? = nil, metadata: [String: String] = [:], condition: WriteCondition? = nil,
                             progress: TransferProgress? = nil) async throws(CatenaError) -> WriteReceipt {
        guard partSize >= 1 else { throw CatenaError(.invalidArgument, "part size must be at least 1 byte") }
        let size = try LocalFile(reading: path).size
        let count = max(1, Int((size + UInt64(partSize) - 1) / UInt64(partSize)))
        guard count <= Manifest.maxParts else {
            throw CatenaError(.invalidArgument, "\(size) bytes in parts of \(partSize) make \(count) parts; at most \(Manifest.maxParts)")
        }
        let upload = try await createMultipartUpload(key, contentType: contentType, metadata: metadata)
        let done = PartProgress()
        let outcomes = await Self.concurrently(count, width: parallelism, stopOnFailure: true) { i in
            let number = i + 1
            let range = UInt64(i) * UInt64(partSize)..<min(size, UInt64(number) * UInt64(partSize))
            return await Result.catching { () async throws(CatenaError) -> UploadedPart in
                try await self.uploadPart(upload, number: number, contentsOf: path, range: range) { stored, _ in
                    progress?(done.record(stored, part: number), size)
                }
            }
        }
        do throws(CatenaError) {
            if let failure = outcomes.firstFailure { throw failure }
            let parts = outcomes.results.compactMap { try? $0?.get() }
            return try await completeMultipartUpload(upload, parts: parts, condition: condition)
        } catch {
            _ = try? await abortMultipartUpload(upload)
            throw error
        }
    }
}

/// The bytes each part of a multipart put has stored so far.
final class PartProgress: Sendable {
    private let stored = Mutex([Int: UInt64]())

    /// Records that part `part` has stored `bytes`; returns the total over all parts.
    func record(_ bytes: UInt64, part: Int) -> UInt64 {
        stored.withLock { s in
            s[part] = bytes
            return s.values.reduce(0, +)
        }
    }
}
