#ifndef RT_VERSION_H
#define RT_VERSION_H
#define RT_VERSION "0.1.0"
#endif
