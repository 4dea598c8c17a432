package csi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// extSuperblockSize reads the size in bytes of the ext2/3/4 filesystem on device from its superblock. It
// needs no e2fsprogs, which node images may lack (mount-utils shells out to dumpe2fs).
func extSuperblockSize(device string) (int64, error) {
	f, err := os.Open(device)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseExtSuperblock(f)
}

const (
	extSuperblockOffset  = 1024
	extMagic             = 0xEF53
	extFeatureIncompat64 = 0x80
)

func parseExtSuperblock(r io.ReaderAt) (int64, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, extSuperblockOffset); err != nil {
		return 0, fmt.Errorf("read ext superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != extMagic {
		return 0, errors.New("no ext filesystem")
	}
	logBlock := binary.LittleEndian.Uint32(sb[0x18:])
	if logBlock > 6 {
		return 0, fmt.Errorf("implausible ext block size 2^(10+%d)", logBlock)
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&extFeatureIncompat64 != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return int64(blocks) << (10 + logBlock), nil
}
