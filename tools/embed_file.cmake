# cmake -DIN=file -DOUT=file.c -DNAME=symbol -P embed_file.cmake
# Writes `const unsigned char NAME[]` (NUL-terminated) and
# `const size_t NAME_len` (without the NUL) holding IN's bytes.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n_hex)
math(EXPR n_bytes "${n_hex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE ${OUT}
  "/* Generated from ${IN} by tools/embed_file.cmake; do not edit. */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${NAME}[] = {\n${body}0x00};\n"
  "const size_t ${NAME}_len = ${n_bytes};\n")
