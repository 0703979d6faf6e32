import CLZ4

/// One-shot helpers over ``LZ4FrameCompressor`` and ``LZ4FrameDecompressor`` for payloads that
/// fit comfortably in memory. Use the streaming types for log segments and other large data.
public enum LZ4Frame {
    /// The four bytes every LZ4 frame starts with: magic number `0x184D2204`, little-endian.
    public static let magic: [UInt8] = [0x04, 0x22, 0x4D, 0x18]

    /// Compresses `bytes` into one complete LZ4 frame (header, blocks, end mark, content checksum).
    ///
    /// - Parameters:
    ///   - bytes: The data to compress; may be empty.
    ///   - blockSize: The frame's maximum block size.
    ///   - level: liblz4 compression level; `0` is the fast compressor, `3...12` select LZ4HC.
    ///   - contentChecksum: Whether to append an xxHash32 of the uncompressed content.
    ///   - blockChecksum: Whether to follow each block with an xxHash32 of its stored bytes.
    /// - Returns: The encoded frame.
    /// - Throws: ``LZ4FrameError`` with code ``LZ4FrameError/Code/compressionFailed`` or
    ///   ``LZ4FrameError/Code/allocationFailed``.
    public static func compress(
        _ bytes: [UInt8],
        blockSize: LZ4FrameCompressor.BlockSize = .max4MB,
        level: Int = 0,
        contentChecksum: Bool = true,
        blockChecksum: Bool = true
    ) throws -> [UInt8] {
        let compressor = try LZ4FrameCompressor(
            blockSize: blockSize,
            level: level,
            contentChecksum: contentChecksum,
            blockChecksum: blockChecksum
        )
        var frame = try compressor.compress(bytes)
        frame += try compressor.finish()
        return frame
    }

    /// Decodes exactly one complete LZ4 frame, verifying every checksum the frame carries.
    ///
    /// - Parameters:
    ///   - bytes: The whole frame and nothing else.
    ///   - maxSize: The largest decompressed size accepted; decoding stops with
    ///     ``LZ4FrameError/Code/outputLimitExceeded`` as soon as it would be exceeded, so at most
    ///     about `maxSize` bytes are ever held.
    /// - Returns: The decompressed content.
    /// - Throws: ``LZ4FrameError``: ``LZ4FrameError/Code/corruptFrame``,
    ///   ``LZ4FrameError/Code/checksumMismatch``, ``LZ4FrameError/Code/truncatedFrame`` or
    ///   ``LZ4FrameError/Code/outputLimitExceeded``.
    public static func decompress(_ bytes: [UInt8], maxSize: Int) throws -> [UInt8] {
        precondition(maxSize >= 0, "maxSize must not be negative")
        let decompressor = LZ4FrameDecompressor(maxOutputPerCall: maxSize)
        let output = try decompressor.decompress(bytes)
        try decompressor.finish()
        return output
    }
}

/// Streaming LZ4 frame encoder: feed data with ``compress(_:)-(UnsafeRawBufferPointer)`` as it
/// arrives, then call ``finish()`` once to close the frame.
///
/// The concatenation of everything returned by the `compress` calls and ``finish()`` is one
/// standard LZ4 frame (readable by `lz4 -d`). The first call that returns output also emits the
/// frame header. Blocks are independent. Memory use is bounded: liblz4's context buffers one
/// block, a reused output buffer holds one compressed block, and each call returns an array of
/// exactly the bytes produced (input is fed to liblz4 one block at a time).
///
/// Not thread-safe and not `Sendable`: one owner uses it at a time.
public final class LZ4FrameCompressor {
    /// The maximum size of the uncompressed data in each block of the frame.
    public enum BlockSize: Sendable, Hashable, CaseIterable {
        /// Blocks of up to 64 KiB.
        case max64KB
        /// Blocks of up to 256 KiB.
        case max256KB
        /// Blocks of up to 1 MiB.
        case max1MB
        /// Blocks of up to 4 MiB (the `lz4` command-line tool's default).
        case max4MB

        /// The block size in bytes.
        public var byteCount: Int {
            switch self {
            case .max64KB: 64 << 10
            case .max256KB: 256 << 10
            case .max1MB: 1 << 20
            case .max4MB: 4 << 20
            }
        }

        var lz4ID: LZ4F_blockSizeID_t {
            switch self {
            case .max64KB: LZ4F_max64KB
            case .max256KB: LZ4F_max256KB
            case .max1MB: LZ4F_max1MB
            case .max4MB: LZ4F_max4MB
            }
        }
    }

    private var context: OpaquePointer?
    private var preferences: LZ4F_preferences_t
    /// Input is fed to liblz4 at most this many bytes at a time (one block).
    private let chunkSize: Int
    /// Reused output buffer, sized by `LZ4F_compressBound` for one chunk plus a frame header.
    private let scratch: UnsafeMutableRawBufferPointer
    private var headerWritten = false
    private var finished = false
    /// Set when liblz4 reported an error; its context is then unusable (undefined state).
    private var failure: LZ4FrameError?

    /// Creates a compressor for one frame.
    ///
    /// - Parameters:
    ///   - blockSize: The frame's maximum block size.
    ///   - level: liblz4 compression level; `0` is the fast compressor, negative values are
    ///     faster still, `3...12` select LZ4HC (larger values are clamped to 12 by liblz4).
    ///   - contentChecksum: Whether the frame ends with an xxHash32 of the uncompressed content.
    ///   - blockChecksum: Whether each block is followed by an xxHash32 of its stored bytes.
    /// - Throws: ``LZ4FrameError`` with code ``LZ4FrameError/Code/allocationFailed`` if liblz4
    ///   cannot create its context.
    public init(
        blockSize: BlockSize = .max4MB,
        level: Int = 0,
        contentChecksum: Bool = true,
        blockChecksum: Bool = true
    ) throws {
        var preferences = LZ4F_preferences_t()
        preferences.frameInfo.blockSizeID = blockSize.lz4ID
        preferences.frameInfo.blockMode = LZ4F_blockIndependent
        preferences.frameInfo.contentChecksumFlag =
            contentChecksum ? LZ4F_contentChecksumEnabled : LZ4F_noContentChecksum
        preferences.frameInfo.blockChecksumFlag =
            blockChecksum ? LZ4F_blockChecksumEnabled : LZ4F_noBlockChecksum
        preferences.frameInfo.frameType = LZ4F_frame
        preferences.compressionLevel = Int32(clamping: level)
        preferences.autoFlush = 0
        preferences.favorDecSpeed = 0

        var context: OpaquePointer?
        let result = LZ4F_createCompressionContext(&context, UInt32(LZ4F_VERSION))
        guard !LZ4FrameError.isError(result), context != nil else {
            LZ4F_freeCompressionContext(context)
            throw LZ4FrameError(
                code: .allocationFailed,
                message: "cannot create LZ4F compression context",
                lz4ErrorName: LZ4FrameError.isError(result) ? LZ4FrameError.errorName(result) : nil
            )
        }
        self.context = context
        self.chunkSize = blockSize.byteCount
        // compressBound is monotonic in srcSize and bound(0) covers flush/compressEnd, so this
        // capacity suffices for every single liblz4 call this class makes.
        let capacity = Int(LZ4F_HEADER_SIZE_MAX) + LZ4F_compressBound(blockSize.byteCount, &preferences)
        self.scratch = .allocate(byteCount: capacity, alignment: 16)
        self.preferences = preferences
    }

    deinit {
        LZ4F_freeCompressionContext(self.context)
        self.scratch.deallocate()
    }

    /// Compresses `input` and returns whatever frame bytes are ready (possibly none, since
    /// liblz4 buffers up to one block internally). The first call also returns the frame header.
    ///
    /// - Throws: ``LZ4FrameError/Code/alreadyFinished`` after ``finish()``;
    ///   ``LZ4FrameError/Code/compressionFailed`` if liblz4 fails (the compressor is then unusable).
    public func compress(_ input: UnsafeRawBufferPointer) throws -> [UInt8] {
        try self.checkUsable()
        var output: [UInt8] = []
        try self.writeHeaderIfNeeded(into: &output)
        guard let source = input.baseAddress else { return output }
        var offset = 0
        while offset < input.count {
            let count = min(self.chunkSize, input.count - offset)
            // scratch.count >= LZ4F_compressBound(count) because count <= chunkSize (see init).
            let result = LZ4F_compressUpdate(
                self.context, self.scratch.baseAddress, self.scratch.count, source + offset, count, nil
            )
            try self.append(result, to: &output, operation: "LZ4F_compressUpdate")
            offset += count
        }
        return output
    }

    /// Compresses `input`; see ``compress(_:)-(UnsafeRawBufferPointer)``. Accepts `[UInt8]`,
    /// `ArraySlice<UInt8>`, `Data` and any other collection of bytes.
    public func compress(_ input: some Collection<UInt8>) throws -> [UInt8] {
        if let result = try input.withContiguousStorageIfAvailable({ try self.compress(UnsafeRawBufferPointer($0)) }) {
            return result
        }
        return try Array(input).withUnsafeBytes { try self.compress($0) }
    }

    /// Compresses everything buffered so far into complete blocks and returns them, so the
    /// receiver can decode all data given so far without waiting for a full block. The frame
    /// stays open. Flushing often produces smaller blocks and a worse ratio.
    ///
    /// - Throws: ``LZ4FrameError/Code/alreadyFinished`` after ``finish()``;
    ///   ``LZ4FrameError/Code/compressionFailed`` if liblz4 fails.
    public func flush() throws -> [UInt8] {
        try self.checkUsable()
        var output: [UInt8] = []
        try self.writeHeaderIfNeeded(into: &output)
        let result = LZ4F_flush(self.context, self.scratch.baseAddress, self.scratch.count, nil)
        try self.append(result, to: &output, operation: "LZ4F_flush")
        return output
    }

    /// Ends the frame: returns the remaining buffered blocks, the end mark and (if enabled)
    /// the content checksum. Afterwards the compressor rejects further use.
    ///
    /// - Throws: ``LZ4FrameError/Code/alreadyFinished`` if called twice;
    ///   ``LZ4FrameError/Code/compressionFailed`` if liblz4 fails.
    public func finish() throws -> [UInt8] {
        try self.checkUsable()
        var output: [UInt8] = []
        try self.writeHeaderIfNeeded(into: &output)
        let result = LZ4F_compressEnd(self.context, self.scratch.baseAddress, self.scratch.count, nil)
        try self.append(result, to: &output, operation: "LZ4F_compressEnd")
        self.finished = true
        return output
    }

    private func checkUsable() throws {
        if let failure = self.failure { throw failure }
        if self.finished {
            throw LZ4FrameError(code: .alreadyFinished, message: "the LZ4 frame was already finished")
        }
    }

    /// Checks an LZ4F result; on success appends that many bytes of `scratch` to `output`.
    private func append(_ result: Int, to output: inout [UInt8], operation: String) throws {
        guard !LZ4FrameError.isError(result) else {
            let error = LZ4FrameError.compression(result, "\(operation) failed")
            self.failure = error
            throw error
        }
        output.append(contentsOf: UnsafeRawBufferPointer(start: self.scratch.baseAddress, count: result))
    }

    /// Appends the frame header on first use.
    private func writeHeaderIfNeeded(into output: inout [UInt8]) throws {
        guard !self.headerWritten else { return }
        let result = LZ4F_compressBegin(self.context, self.scratch.baseAddress, self.scratch.count, &self.preferences)
        try self.append(result, to: &output, operation: "LZ4F_compressBegin")
        self.headerWritten = true
    }
}

@available(*, unavailable, message: "LZ4FrameCompressor has a single owner; it must not cross isolation domains")
extension LZ4FrameCompressor: Sendable {}
